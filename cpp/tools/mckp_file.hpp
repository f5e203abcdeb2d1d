// The reader of the MCKP problem file (docs/mckp-file-format.md), shared by `mpq-solve` and the fuzzer
// (cpp/fuzz/): on bad input it throws std::invalid_argument naming the line and the token, never anything else.
#pragma once
#include <cstdint>
#include <istream>
#include <string>
#include <vector>

namespace mpq_tools {

/// A problem in the CSR form of mpq::solve_mckp: group g owns items [offsets[g], offsets[g+1]).
struct MckpProblem {
  std::vector<int64_t> offsets{0};
  std::vector<double> gains, costs;
};

/// Reads the whole file format. @throws std::invalid_argument ("line N: what: 'token' ...") on bad input.
MckpProblem read_mckp_problem(std::istream& in);

/// A number of the file's grammar (also the command line's): finite, decimal, not rounded to 0.
/// @throws std::invalid_argument starting with `what`.
double parse_mckp_number(const std::string& s, const std::string& what);

/// An integer of the file's grammar, [+-]?[0-9]+ within int64. @throws std::invalid_argument starting with `what`.
int64_t parse_mckp_integer(const std::string& s, const std::string& what);

}  // namespace mpq_tools
