// Python binding of the MCKP solver (mpq/mckp.hpp). Arrays cross without copies (exact dtype, C-contiguous);
// the solve runs with the GIL released. Results come back as dicts that python/mpq/mckp.py wraps.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "array_args.hpp"
#include "mpq/mckp.hpp"

namespace py = pybind11;

namespace {

struct Csr {
  mpq::Span<const int64_t> offsets;
  mpq::Span<const double> gains, costs;
};

template <class T>
mpq::Span<const T> span_of(const py::array& a, const char* what) {
  const T* p = mpq_py::c_array<T>(a, what);
  if (a.ndim() != 1) throw std::invalid_argument(std::string(what) + ": expected a 1-D array, got ndim " +
                                                 std::to_string(a.ndim()));
  return {p, static_cast<std::size_t>(a.shape(0))};
}

Csr csr(const char* fn, const py::array& offsets, const py::array& gains, const py::array& costs) {
  const std::string f(fn);
  return {span_of<int64_t>(offsets, (f + ": offsets").c_str()), span_of<double>(gains, (f + ": gains").c_str()),
          span_of<double>(costs, (f + ": costs").c_str())};
}

mpq::MckpOptions options(double time_limit, int64_t max_states, int64_t beam_width, double rel_gap,
                         int64_t max_nodes) {
  mpq::MckpOptions o;
  o.time_limit = time_limit;
  o.max_states = max_states;
  o.beam_width = beam_width;
  o.rel_gap = rel_gap;
  o.max_nodes = max_nodes;
  return o;
}

py::dict to_dict(const mpq::MckpResult& r) {
  py::array_t<int64_t> choice(static_cast<py::ssize_t>(r.choice.size()));
  auto* c = choice.mutable_data();
  for (std::size_t i = 0; i < r.choice.size(); ++i) c[i] = r.choice[i];
  py::dict d;
  d["status"] = mpq::to_string(r.status);
  d["choice"] = choice;
  d["objective"] = r.objective;
  d["cost"] = r.cost;
  d["memory"] = r.memory;
  d["bound"] = r.bound;
  d["seconds"] = r.seconds;
  d["nodes"] = r.nodes;
  d["core_groups"] = r.core_groups;
  d["message"] = r.message;
  return d;
}

const mpq::MckpOptions kDefaults;

#define MPQ_MCKP_OPTION_ARGS                                                                        \
  py::arg("time_limit") = kDefaults.time_limit, py::arg("max_states") = kDefaults.max_states,       \
  py::arg("beam_width") = kDefaults.beam_width, py::arg("rel_gap") = kDefaults.rel_gap,             \
  py::arg("max_nodes") = kDefaults.max_nodes

}  // namespace

void bind_mckp(py::module_& m) {
  m.def(
      "mckp_solve",
      [](const py::array& offsets, const py::array& gains, const py::array& costs, double budget, double time_limit,
         int64_t max_states, int64_t beam_width, double rel_gap, int64_t max_nodes) {
        const Csr x = csr("mckp_solve", offsets, gains, costs);
        const mpq::MckpOptions o = options(time_limit, max_states, beam_width, rel_gap, max_nodes);
        mpq::MckpResult r;
        {
          py::gil_scoped_release nogil;
          r = mpq::solve_mckp(x.offsets, x.gains, x.costs, budget, o);
        }
        return to_dict(r);
      },
      py::arg("offsets"), py::arg("gains"), py::arg("costs"), py::arg("budget"), MPQ_MCKP_OPTION_ARGS,
      "Exact MCKP (maximise gain, cost <= budget) on CSR groups: offsets int64, gains/costs float64.");
  m.def(
      "mckp_min_cost",
      [](const py::array& offsets, const py::array& gains, const py::array& costs, double min_gain,
         double time_limit, int64_t max_states, int64_t beam_width, double rel_gap, int64_t max_nodes) {
        const Csr x = csr("mckp_min_cost", offsets, gains, costs);
        const mpq::MckpOptions o = options(time_limit, max_states, beam_width, rel_gap, max_nodes);
        mpq::MckpResult r;
        {
          py::gil_scoped_release nogil;
          r = mpq::solve_mckp_min_cost(x.offsets, x.gains, x.costs, min_gain, o);
        }
        return to_dict(r);
      },
      py::arg("offsets"), py::arg("gains"), py::arg("costs"), py::arg("min_gain"), MPQ_MCKP_OPTION_ARGS,
      "Least total cost reaching total gain >= min_gain.");
  m.def(
      "mckp_memory",
      [](const py::array& offsets, const py::array& gains, const py::array& costs, const py::array& memory,
         double budget, double max_memory, double time_limit, int64_t max_states, int64_t beam_width,
         double rel_gap, int64_t max_nodes) {
        const Csr x = csr("mckp_memory", offsets, gains, costs);
        const auto mem = span_of<double>(memory, "mckp_memory: memory");
        const mpq::MckpOptions o = options(time_limit, max_states, beam_width, rel_gap, max_nodes);
        mpq::MckpResult r;
        {
          py::gil_scoped_release nogil;
          r = mpq::solve_mckp_memory(x.offsets, x.gains, x.costs, mem, budget, max_memory, o);
        }
        return to_dict(r);
      },
      py::arg("offsets"), py::arg("gains"), py::arg("costs"), py::arg("memory"), py::arg("budget"),
      py::arg("max_memory"), MPQ_MCKP_OPTION_ARGS, "MCKP with a second row: sum(memory) <= max_memory.");
  m.def(
      "mckp_sweep",
      [](const py::array& offsets, const py::array& gains, const py::array& costs, const py::array& budgets,
         double time_limit, int64_t max_states, int64_t beam_width, double rel_gap, int64_t max_nodes) {
        const Csr x = csr("mckp_sweep", offsets, gains, costs);
        const auto b = span_of<double>(budgets, "mckp_sweep: budgets");
        const mpq::MckpOptions o = options(time_limit, max_states, beam_width, rel_gap, max_nodes);
        std::vector<mpq::MckpResult> rs;
        {
          py::gil_scoped_release nogil;
          rs = mpq::sweep_mckp(x.offsets, x.gains, x.costs, b, o);
        }
        py::list out;
        for (const auto& r : rs) out.append(to_dict(r));
        return out;
      },
      py::arg("offsets"), py::arg("gains"), py::arg("costs"), py::arg("budgets"), MPQ_MCKP_OPTION_ARGS,
      "One solve per budget, sharing the preprocessing.");
  m.def(
      "mckp_lp_bound",
      [](const py::array& offsets, const py::array& gains, const py::array& costs, double budget) {
        const Csr x = csr("mckp_lp_bound", offsets, gains, costs);
        py::gil_scoped_release nogil;
        return mpq::mckp_lp_bound(x.offsets, x.gains, x.costs, budget);
      },
      py::arg("offsets"), py::arg("gains"), py::arg("costs"), py::arg("budget"),
      "LP relaxation value (an upper bound on the MCKP optimum); -inf if infeasible.");
}
