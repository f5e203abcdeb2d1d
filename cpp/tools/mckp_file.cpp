// The reader of docs/mckp-file-format.md (see mckp_file.hpp).
#include "mckp_file.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

namespace mpq_tools {
namespace {

// Whitespace-separated tokens; '#' starts a comment that runs to the end of the line.
class Tokens {
 public:
  explicit Tokens(std::istream& in) : in_(in) {}
  bool next(std::string& tok, int& line) {
    for (;;) {
      if (ss_ >> tok) { line = line_; return true; }
      std::string raw;
      if (!std::getline(in_, raw)) {
        if (in_.bad()) throw std::invalid_argument("read error after line " + std::to_string(line_));
        return false;
      }
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

}  // namespace

double parse_mckp_number(const std::string& s, const std::string& what) {
  if (!is_decimal(s, false)) throw std::invalid_argument(what + ": '" + shown(s) + "' is not a decimal number");
  errno = 0;
  const double v = std::strtod(s.c_str(), nullptr);
  if (std::isinf(v)) throw std::invalid_argument(what + ": '" + s + "' is beyond the range of a double");
  if (v == 0 && has_nonzero_digit(s))
    throw std::invalid_argument(what + ": '" + s + "' is too small for a double (it would read as 0)");
  return v;  // subnormal results are kept (strtod's ERANGE for them is not an error here)
}

int64_t parse_mckp_integer(const std::string& s, const std::string& what) {
  if (!is_decimal(s, true)) throw std::invalid_argument(what + ": '" + shown(s) + "' is not an integer");
  errno = 0;
  const long long v = std::strtoll(s.c_str(), nullptr, 10);
  if (errno == ERANGE) throw std::invalid_argument(what + ": '" + s + "' is beyond the range of an integer");
  return v;
}

MckpProblem read_mckp_problem(std::istream& in) {
  Tokens t(in);
  std::string tok;
  int line = 0;
  auto need = [&](const std::string& what) {
    if (!t.next(tok, line)) throw std::invalid_argument("unexpected end of file: expected " + what);
    return "line " + std::to_string(line) + ": " + what;
  };
  MckpProblem p;
  std::string where = need("the group count");
  const int64_t n = parse_mckp_integer(tok, where);
  if (n < 0) throw std::invalid_argument(where + " must be >= 0");
  for (int64_t g = 0; g < n; ++g) {
    const std::string grp = "group " + std::to_string(g);
    where = need("the item count of " + grp);
    const int64_t k = parse_mckp_integer(tok, where);
    if (k < 1) throw std::invalid_argument(where + " must be >= 1 (" + grp + " is empty)");
    for (int64_t j = 0; j < k; ++j) {
      const std::string item = "item " + std::to_string(j) + " of " + grp;
      where = need("the gain of " + item);
      p.gains.push_back(parse_mckp_number(tok, where));
      where = need("the cost of " + item);
      p.costs.push_back(parse_mckp_number(tok, where));
    }
    p.offsets.push_back(static_cast<int64_t>(p.gains.size()));
  }
  if (t.next(tok, line))
    throw std::invalid_argument("line " + std::to_string(line) + ": unexpected '" + tok + "' after the last group");
  return p;
}

}  // namespace mpq_tools
