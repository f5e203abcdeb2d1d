// libFuzzer harness for the MCKP file reader of `mpq-solve` (cpp/tools/mckp_file.cpp); cpp/fuzz/README.md says
// how to build and run it. Any input must either parse or throw std::invalid_argument; a parsed problem small
// enough to solve quickly is also solved (both directions, tight limits), and the solution must be consistent.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#include "mckp_file.hpp"
#include "mpq/mckp.hpp"

namespace {

// A solver answer that contradicts its own input is a bug: abort, so that libFuzzer keeps the input.
void check_result(const mpq_tools::MckpProblem& p, const mpq::MckpResult& r) {
  const size_t groups = p.offsets.size() - 1;
  if (r.choice.empty()) return;
  if (r.choice.size() != groups) std::abort();
  for (size_t g = 0; g < groups; ++g) {
    if (r.choice[g] < 0 || r.choice[g] >= p.offsets[g + 1] - p.offsets[g]) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  mpq_tools::MckpProblem p;
  try {
    p = mpq_tools::read_mckp_problem(in);
  } catch (const std::invalid_argument&) {
    return 0;  // bad input, said so: the reader's only allowed failure
  }
  if (p.offsets.size() - 1 > 12 || p.gains.size() > 48) return 0;  // keep every execution fast
  mpq::MckpOptions opts;
  opts.max_states = 20000;
  opts.max_nodes = 20000;
  double total = 0;
  for (double c : p.costs) total += c;
  for (double budget : {0.0, total / 2, total}) {
    try {
      check_result(p, mpq::solve_mckp(p.offsets, p.gains, p.costs, std::isfinite(budget) ? budget : 1.0, opts));
      check_result(p, mpq::solve_mckp_min_cost(p.offsets, p.gains, p.costs, budget / 4, opts));
    } catch (const std::invalid_argument&) {  // e.g. a negative cost: the solver's documented refusal
    }
  }
  return 0;
}
