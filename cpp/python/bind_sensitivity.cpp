// Binding of mpq/sensitivity.hpp: tensors cross as zero-copy float32 numpy views; the GIL is released while the
// kernel runs. Arrays of the wrong dtype or layout are refused (no hidden copies).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#include "array_args.hpp"
#include "mpq/sensitivity.hpp"

namespace py = pybind11;
using mpq_py::c_array;

void bind_sensitivity(py::module_& m) {
  m.def(
      "sensitivity",
      [](const py::array& t, const py::array& g, std::size_t rows, std::size_t cols, std::size_t n_grads,
         std::size_t sample_rows, const std::vector<std::tuple<std::string, std::size_t, std::string, py::array,
                                                                py::array>>& specs,
         int num_threads) {
        const float* tp = c_array<float>(t, "sensitivity: t");
        const float* gp = c_array<float>(g, "sensitivity: g");
        if (static_cast<std::size_t>(t.size()) != rows * cols)
          throw std::invalid_argument("sensitivity: t has " + std::to_string(t.size()) + " values, expected rows*cols = " +
                                      std::to_string(rows * cols));
        if (static_cast<std::size_t>(g.size()) != n_grads * rows * cols)
          throw std::invalid_argument("sensitivity: g has " + std::to_string(g.size()) +
                                      " values, expected n_grads*rows*cols = " + std::to_string(n_grads * rows * cols));
        if (sample_rows == 0 || rows % sample_rows)
          throw std::invalid_argument("sensitivity: sample_rows must be positive and divide rows = " +
                                      std::to_string(rows));
        std::vector<mpq::QuantSpec> qs(specs.size());
        for (std::size_t c = 0; c < specs.size(); ++c) {
          const auto& [fmt, block, rule, scales, zps] = specs[c];
          const std::string what = "sensitivity: specs[" + std::to_string(c) + "]";
          qs[c].format = &mpq::format_by_name(fmt);
          qs[c].block = block;
          qs[c].rule = mpq::scale_rule_by_name(rule);
          qs[c].scales = {c_array<float>(scales, (what + ".scales").c_str()), static_cast<std::size_t>(scales.size())};
          qs[c].zero_points = {c_array<float>(zps, (what + ".zero_points").c_str()), static_cast<std::size_t>(zps.size())};
        }
        const py::ssize_t n_blocks = static_cast<py::ssize_t>(rows / sample_rows);
        py::array_t<double> out({static_cast<py::ssize_t>(n_grads), n_blocks, static_cast<py::ssize_t>(specs.size())});
        double* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          mpq::sensitivity(tp, gp, rows, cols, n_grads, sample_rows, {qs.data(), qs.size()}, op, num_threads);
        }
        return out;
      },
      py::arg("t"), py::arg("g"), py::arg("rows"), py::arg("cols"), py::arg("n_grads"), py::arg("sample_rows"),
      py::arg("specs"), py::arg("num_threads") = 1,
      "out[k, b, c] = sum over row block b of g[k] * (Q_c(t) - t), for every spec c = (format, block, rule, "
      "scales, zero_points) at once; t: rows*cols float32, g: n_grads*rows*cols float32 (C-contiguous).");
}
