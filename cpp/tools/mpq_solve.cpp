// mpq-solve: solve a multiple-choice knapsack stored in a text file (docs/mckp-file-format.md).
//   mpq-solve FILE --budget B [--time-limit S] [--rel-gap G] [--max-states N]
//   mpq-solve FILE --min-gain G [...]          least cost reaching a total gain
// Prints the result as `key value` lines; exits with the status (0 optimal, 2 infeasible, 3 limit), or 1 with a
// one-line message on stderr for bad input (never 2: that is the infeasible status). FILE "-" reads stdin.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <system_error>

#include "mckp_file.hpp"
#include "mpq/mckp.hpp"

namespace {

const char* kUsage =
    "usage: mpq-solve FILE (--budget B | --min-gain G) [--time-limit S] [--rel-gap G] [--max-states N]";

// A mistake in the command line itself: its message carries the usage, on the same line.
struct UsageError : std::invalid_argument {
  explicit UsageError(const std::string& what) : std::invalid_argument(what + " (" + kUsage + ")") {}
};

int run(int argc, char** argv) {
  std::string file;
  bool have_budget = false, have_gain = false;
  double budget = 0, min_gain = 0;
  mpq::MckpOptions opts;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) {
      if (i + 1 >= argc) throw UsageError(std::string(name) + " needs a value");
      return std::string(argv[++i]);
    };
    if (a == "--budget") { budget = mpq_tools::parse_mckp_number(value("--budget"), "--budget"); have_budget = true; }
    else if (a == "--min-gain") { min_gain = mpq_tools::parse_mckp_number(value("--min-gain"), "--min-gain"); have_gain = true; }
    else if (a == "--time-limit") {
      opts.time_limit = mpq_tools::parse_mckp_number(value("--time-limit"), "--time-limit");
      if (!(opts.time_limit > 0))
        throw std::invalid_argument("--time-limit must be > 0 seconds (leave it out for no limit)");
    }
    else if (a == "--rel-gap") opts.rel_gap = mpq_tools::parse_mckp_number(value("--rel-gap"), "--rel-gap");
    else if (a == "--max-states") opts.max_states = mpq_tools::parse_mckp_integer(value("--max-states"), "--max-states");
    else if (a == "-h" || a == "--help") { std::cout << kUsage << "\n"; return 0; }
    else if (a.size() > 1 && a[0] == '-' && a[1] == '-') throw UsageError("unknown option " + a);
    else if (file.empty()) file = a;
    else throw UsageError("more than one FILE given");
  }
  if (file.empty()) throw UsageError("no FILE given");
  if (have_budget == have_gain) throw UsageError("give exactly one of --budget and --min-gain");
  mpq_tools::MckpProblem p;
  if (file == "-") {
    p = mpq_tools::read_mckp_problem(std::cin);
  } else {
    std::error_code ec;  // a folder opens as a stream that reads nothing: name it, not "unexpected end of file"
    if (std::filesystem::is_directory(file, ec)) throw std::invalid_argument(file + ": is a directory, not a file");
    std::ifstream in(file);
    if (!in) {
      throw std::invalid_argument(file + (std::filesystem::exists(file, ec) ? ": cannot be read" : ": no such file"));
    }
    try { p = mpq_tools::read_mckp_problem(in); }
    catch (const std::invalid_argument& e) { throw std::invalid_argument(file + ": " + e.what()); }
  }
  const mpq::MckpResult r = have_budget ? mpq::solve_mckp(p.offsets, p.gains, p.costs, budget, opts)
                                        : mpq::solve_mckp_min_cost(p.offsets, p.gains, p.costs, min_gain, opts);
  std::printf("status %s\n", mpq::to_string(r.status));
  if (!r.choice.empty()) {
    std::printf("objective %.17g\ncost %.17g\n", r.objective, r.cost);
  }
  std::printf("bound %.17g\nseconds %.6f\nnodes %lld\ncore_groups %lld\n", r.bound, r.seconds,
              static_cast<long long>(r.nodes), static_cast<long long>(r.core_groups));
  if (!r.choice.empty()) {
    std::printf("choice");
    for (int32_t c : r.choice) std::printf(" %d", c);
    std::printf("\n");
  }
  if (!r.message.empty()) std::printf("message %s\n", r.message.c_str());
  return static_cast<int>(r.status);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // bad input or options: never a crash
    std::fprintf(stderr, "mpq-solve: %s\n", e.what());
    return 1;
  }
}
