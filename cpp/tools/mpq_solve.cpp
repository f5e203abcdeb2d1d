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

// The grammar of docs/mckp-file-format.md, the same in `mpq solve`: an integer is [+-]?[0-9]+; a number is
// [+-]?([0-9]+(.[0-9]*)?|.[0-9]+)([eE][+-]?[0-9]+)? whose value is finite and, unless every digit is 0, not
// rounded to 0. No hex, no inf/nan, nothing after the last digit (not even a NUL byte).
bool digits(const std::string& s, std::size_t& i) {
  const std::size_t from = i;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  return i > from;
}

bool is_decimal(const std::string& s, bool integer) {
  std::size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  const bool whole = digits(s, i);
  if (integer) return whole && i == s.size();
  bool frac = false;
  if (i < s.size() && s[i] == '.') frac = digits(s, ++i);
  if (!whole && !frac) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digits(s, i)) return false;
  }
  return i == s.size();
}

// A token as an error message shows it: bytes outside printable ASCII (a NUL among them) as \xNN.
std::string shown(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

bool has_nonzero_digit(const std::string& s) {
  for (char c : s) {
    if (c == 'e' || c == 'E') break;
    if (c >= '1' && c <= '9') return true;
  }
  return false;
}

double parse_double(const std::string& s, const std::string& what) {
  if (!is_decimal(s, false)) throw std::invalid_argument(what + ": '" + shown(s) + "' is not a decimal number");
  errno = 0;
  const double v = std::strtod(s.c_str(), nullptr);
  if (std::isinf(v)) throw std::invalid_argument(what + ": '" + s + "' is beyond the range of a double");
  if (v == 0 && has_nonzero_digit(s))
    throw std::invalid_argument(what + ": '" + s + "' is too small for a double (it would read as 0)");
  return v;  // subnormal results are kept (strtod's ERANGE for them is not an error here)
}

int64_t parse_int(const std::string& s, const std::string& what) {
  if (!is_decimal(s, true)) throw std::invalid_argument(what + ": '" + shown(s) + "' is not an integer");
  errno = 0;
  const long long v = std::strtoll(s.c_str(), nullptr, 10);
  if (errno == ERANGE) throw std::invalid_argument(what + ": '" + s + "' is beyond the range of an integer");
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
    else if (a == "--time-limit") {
      opts.time_limit = parse_double(value("--time-limit"), "--time-limit");
      if (!(opts.time_limit > 0))
        throw std::invalid_argument("--time-limit must be > 0 seconds (leave it out for no limit)");
    }
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
