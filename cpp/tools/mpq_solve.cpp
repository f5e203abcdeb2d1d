// mpq-solve: solve a multiple-choice knapsack stored in a text file (docs/mckp-file-format.md).
//   mpq-solve FILE --budget B [--time-limit S] [--rel-gap G] [--max-states N]
//   mpq-solve FILE --min-gain G [...]          least cost reaching a total gain
// Prints the result as `key value` lines; exits with the status (0 optimal, 2 infeasible, 3 limit), or 1 with a
// message on stderr for bad input. FILE "-" reads stdin.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpq/mckp.hpp"

namespace {

const char* kUsage =
    "usage: mpq-solve FILE (--budget B | --min-gain G) [--time-limit S] [--rel-gap G] [--max-states N]\n";

struct Problem {
  std::vector<int64_t> offsets{0};
  std::vector<double> gains, costs;
};

// Whitespace-separated tokens; '#' starts a comment that runs to the end of the line.
class Tokens {
 public:
  explicit Tokens(std::istream& in) : in_(in) {}
  bool next(std::string& tok, int& line) {
    for (;;) {
      if (ss_ >> tok) { line = line_; return true; }
      std::string raw;
      if (!std::getline(in_, raw)) return false;
      ++line_;
      const auto hash = raw.find('#');
      if (hash != std::string::npos) raw.resize(hash);
      ss_.clear();
      ss_.str(raw);
    }
  }
 private:
  std::istream& in_;
  std::istringstream ss_;
  int line_ = 0;
};

double parse_double(const std::string& s, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0' || errno == ERANGE)
    throw std::invalid_argument(what + ": '" + s + "' is not a number");
  return v;
}

int64_t parse_int(const std::string& s, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (end == s.c_str() || *end != '\0' || errno == ERANGE)
    throw std::invalid_argument(what + ": '" + s + "' is not an integer");
  return v;
}

Problem read_problem(std::istream& in) {
  Tokens t(in);
  std::string tok;
  int line = 0;
  auto need = [&](const std::string& what) {
    if (!t.next(tok, line)) throw std::invalid_argument("unexpected end of file: expected " + what);
    return "line " + std::to_string(line) + ": " + what;
  };
  Problem p;
  std::string where = need("the group count");
  const int64_t n = parse_int(tok, where);
  if (n < 0) throw std::invalid_argument(where + " must be >= 0");
  for (int64_t g = 0; g < n; ++g) {
    const std::string grp = "group " + std::to_string(g);
    where = need("the item count of " + grp);
    const int64_t k = parse_int(tok, where);
    if (k < 1) throw std::invalid_argument(where + " must be >= 1 (" + grp + " is empty)");
    for (int64_t j = 0; j < k; ++j) {
      const std::string item = "item " + std::to_string(j) + " of " + grp;
      where = need("the gain of " + item);
      p.gains.push_back(parse_double(tok, where));
      where = need("the cost of " + item);
      p.costs.push_back(parse_double(tok, where));
    }
    p.offsets.push_back(static_cast<int64_t>(p.gains.size()));
  }
  if (t.next(tok, line))
    throw std::invalid_argument("line " + std::to_string(line) + ": unexpected '" + tok + "' after the last group");
  return p;
}

int run(int argc, char** argv) {
  std::string file;
  bool have_budget = false, have_gain = false;
  double budget = 0, min_gain = 0;
  mpq::MckpOptions opts;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) {
      if (i + 1 >= argc) throw std::invalid_argument(std::string(name) + " needs a value");
      return std::string(argv[++i]);
    };
    if (a == "--budget") { budget = parse_double(value("--budget"), "--budget"); have_budget = true; }
    else if (a == "--min-gain") { min_gain = parse_double(value("--min-gain"), "--min-gain"); have_gain = true; }
    else if (a == "--time-limit") opts.time_limit = parse_double(value("--time-limit"), "--time-limit");
    else if (a == "--rel-gap") opts.rel_gap = parse_double(value("--rel-gap"), "--rel-gap");
    else if (a == "--max-states") opts.max_states = parse_int(value("--max-states"), "--max-states");
    else if (a == "-h" || a == "--help") { std::cout << kUsage; return 0; }
    else if (a.size() > 1 && a[0] == '-' && a[1] == '-') throw std::invalid_argument("unknown option " + a);
    else if (file.empty()) file = a;
    else throw std::invalid_argument("more than one FILE given");
  }
  if (file.empty()) throw std::invalid_argument("no FILE given");
  if (have_budget == have_gain) throw std::invalid_argument("give exactly one of --budget and --min-gain");
  Problem p;
  if (file == "-") {
    p = read_problem(std::cin);
  } else {
    std::ifstream in(file);
    if (!in) throw std::invalid_argument(file + ": cannot open");
    try { p = read_problem(in); }
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
    std::fprintf(stderr, "mpq-solve: %s\n%s", e.what(), kUsage);
    return 1;
  }
}
