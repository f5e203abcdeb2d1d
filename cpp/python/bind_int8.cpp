// Bindings of mpq/int8.hpp: exact dtypes, C-contiguous, outputs allocated here, GIL released around the kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "array_args.hpp"
#include "mpq/int8.hpp"

namespace py = pybind11;
using mpq_py::c_array;
using mpq_py::c_array_mut;

namespace {

void need_ndim(const py::array& a, const char* what, py::ssize_t ndim) {
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(what) + ": expected " + std::to_string(ndim) + "-D, got " +
                                std::to_string(a.ndim()) + "-D");
}

// The activation and output side of the packed entries: x [M, K] of type T and out [M, N] float32.
template <class T>
struct LinearIO {
  const T* x;
  float* out;
  py::ssize_t m, k, n;
};

template <class T>
LinearIO<T> linear_io(const std::string& fn, const char* x_name, const py::array& x, py::array& out) {
  const std::string xw = fn + ": " + x_name, ow = fn + ": out";
  const T* xp = c_array<T>(x, xw.c_str());
  need_ndim(x, xw.c_str(), 2);
  float* op = c_array_mut<float>(out, ow.c_str());
  need_ndim(out, ow.c_str(), 2);
  if (out.shape(0) != x.shape(0)) throw std::invalid_argument(fn + ": out must have " + x_name + "'s rows");
  return {xp, op, x.shape(0), x.shape(1), out.shape(1)};
}

// The weight side of the packed entries, checked against the activations' K and the output's N: packed (as
// pack_int8_weights made it for [N, K]), col_scale [N] and bias [N] or None.
struct PackedWeights {
  const int8_t* packed;
  const float* col_scale;
  const float* bias;
};

PackedWeights packed_weights(const std::string& fn, const py::array& packed, const py::array& col_scale,
                             const py::object& bias, py::ssize_t n, py::ssize_t k) {
  PackedWeights pw{c_array<int8_t>(packed, (fn + ": packed").c_str()), nullptr, nullptr};
  if (packed.size() != mpq::int8_packed_bytes(n, k))
    throw std::invalid_argument(fn + ": packed holds " + std::to_string(packed.size()) + " bytes, weights [" +
                                std::to_string(n) + ", " + std::to_string(k) + "] pack into " +
                                std::to_string(mpq::int8_packed_bytes(n, k)));
  pw.col_scale = c_array<float>(col_scale, (fn + ": col_scale").c_str());
  if (col_scale.size() != n) throw std::invalid_argument(fn + ": col_scale needs one value per output");
  if (!bias.is_none()) {
    py::array b = bias.cast<py::array>();  // the caller's own array (c_array refuses anything else): it stays alive
    pw.bias = c_array<float>(b, (fn + ": bias").c_str());
    if (b.size() != n) throw std::invalid_argument(fn + ": bias needs one value per output");
  }
  return pw;
}

}  // namespace

void bind_int8(py::module_& m) {
  m.def("quantize_rows_int8", [](const py::array& x, int threads) {
    const float* xp = c_array<float>(x, "quantize_rows_int8: x");
    need_ndim(x, "quantize_rows_int8: x", 2);
    const py::ssize_t rows = x.shape(0), cols = x.shape(1);
    py::array_t<int8_t> q({rows, cols});
    py::array_t<float> s(rows);
    int8_t* qp = q.mutable_data();
    float* sp = s.mutable_data();
    {
      py::gil_scoped_release nogil;
      mpq::quantize_rows_int8(xp, rows, cols, qp, sp, threads);
    }
    return py::make_tuple(q, s);
  }, py::arg("x"), py::arg("threads") = 1,
  "Per-row symmetric int8 quantization of a C-contiguous float32 [rows, cols]: returns (int8 q, float32 scales).");

  m.def("quantize_int8_static", [](const py::array& x, float scale, int threads) {
    const float* xp = c_array<float>(x, "quantize_int8_static: x");
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    py::array_t<int8_t> q(shape);
    int8_t* qp = q.mutable_data();
    const int64_t n = x.size();
    {
      py::gil_scoped_release nogil;
      mpq::quantize_int8_static(xp, n, scale, qp, threads);
    }
    return q;
  }, py::arg("x"), py::arg("scale"), py::arg("threads") = 1,
  "int8 quantization with one given scale: returns int8 q of x's shape.");

  m.def("int8_linear_into", [](const py::array& xq, const py::array& row_scale, const py::array& w,
                               const py::array& col_scale, const py::object& bias, py::array& out, int threads) {
    const int8_t* xp = c_array<int8_t>(xq, "int8_linear: xq");
    need_ndim(xq, "int8_linear: xq", 2);
    const int8_t* wp = c_array<int8_t>(w, "int8_linear: w");
    need_ndim(w, "int8_linear: w", 2);
    const py::ssize_t m = xq.shape(0), k = xq.shape(1), n = w.shape(0);
    if (w.shape(1) != k) throw std::invalid_argument("int8_linear: w must be [N, K] with xq's K");
    const float* rp = c_array<float>(row_scale, "int8_linear: row_scale");
    const float* cp = c_array<float>(col_scale, "int8_linear: col_scale");
    if (row_scale.size() != m) throw std::invalid_argument("int8_linear: row_scale needs one value per row");
    if (col_scale.size() != n) throw std::invalid_argument("int8_linear: col_scale needs one value per output");
    const float* bp = nullptr;
    if (!bias.is_none()) {
      py::array b = bias.cast<py::array>();
      bp = c_array<float>(b, "int8_linear: bias");
      if (b.size() != n) throw std::invalid_argument("int8_linear: bias needs one value per output");
    }
    float* op = c_array_mut<float>(out, "int8_linear: out");
    if (out.ndim() != 2 || out.shape(0) != m || out.shape(1) != n)
      throw std::invalid_argument("int8_linear: out must be [M, N]");
    {
      py::gil_scoped_release nogil;
      mpq::int8_linear(xp, rp, m, k, wp, cp, bp, n, op, threads);
    }
  }, py::arg("xq"), py::arg("row_scale"), py::arg("w"), py::arg("col_scale"), py::arg("bias"), py::arg("out"),
  py::arg("threads") = 1, "out = (xq @ w.T) * row_scale[:, None] * col_scale[None, :] + bias (exact int32 sums).");

  m.def("pack_int8_weights", [](const py::array& w) {
    const int8_t* wp = c_array<int8_t>(w, "pack_int8_weights: w");
    need_ndim(w, "pack_int8_weights: w", 2);
    const py::ssize_t n = w.shape(0), k = w.shape(1);
    py::array_t<int8_t> packed(static_cast<py::ssize_t>(mpq::int8_packed_bytes(n, k)));
    int8_t* pp = packed.mutable_data();
    {
      py::gil_scoped_release nogil;
      mpq::pack_int8_weights(wp, n, k, pp);
    }
    return packed;
  }, py::arg("w"), "Packs int8 weights [N, K] (values in [-127, 127]) for int8_linear_packed_into: a 1-D int8 array "
  "in the layout of mpq/int8.hpp.");

  m.def("int8_linear_packed_into", [](const py::array& xq, const py::array& row_scale, const py::array& packed,
                                      const py::array& col_scale, const py::object& bias, py::array& out,
                                      int threads) {
    const auto [xp, op, m, k, n] = linear_io<int8_t>("int8_linear_packed", "xq", xq, out);
    const PackedWeights pw = packed_weights("int8_linear_packed", packed, col_scale, bias, n, k);
    const float* rp = c_array<float>(row_scale, "int8_linear_packed: row_scale");
    if (row_scale.size() != m) throw std::invalid_argument("int8_linear_packed: row_scale needs one value per row");
    {
      py::gil_scoped_release nogil;
      mpq::int8_linear_packed(xp, rp, m, k, pw.packed, pw.col_scale, pw.bias, n, op, threads);
    }
  }, py::arg("xq"), py::arg("row_scale"), py::arg("packed"), py::arg("col_scale"), py::arg("bias"), py::arg("out"),
  py::arg("threads") = 1, "int8_linear_into with weights from pack_int8_weights; out's columns give N.");

  m.def("int8_linear_from_float_into", [](const py::array& x, const py::object& static_scale,
                                          const py::array& packed, const py::array& col_scale, const py::object& bias,
                                          py::array& out, int threads) {
    const auto [xp, op, m, k, n] = linear_io<float>("int8_linear_from_float", "x", x, out);
    const PackedWeights pw = packed_weights("int8_linear_from_float", packed, col_scale, bias, n, k);
    const float scale = static_scale.is_none() ? 0.0f : static_scale.cast<float>();
    if (!static_scale.is_none() && !(scale > 0.0f))
      throw std::invalid_argument("int8_linear_from_float: static_scale must be positive and finite, got " +
                                  std::to_string(scale));
    {
      py::gil_scoped_release nogil;
      mpq::int8_linear_from_float(xp, m, k, scale, pw.packed, pw.col_scale, pw.bias, n, op, threads);
    }
  }, py::arg("x"), py::arg("static_scale"), py::arg("packed"), py::arg("col_scale"), py::arg("bias"), py::arg("out"),
  py::arg("threads") = 1, "quantize_rows_int8 (static_scale None) or quantize_int8_static, then "
  "int8_linear_packed_into, in one call: the same result bit for bit.");

  m.def("dequantize_int32_into", [](const py::array& acc, const py::array& row_scale, const py::array& col_scale,
                                    const py::object& bias, py::array& out, int threads) {
    const int32_t* ap = c_array<int32_t>(acc, "dequantize_int32: acc");
    need_ndim(acc, "dequantize_int32: acc", 2);
    const py::ssize_t rows = acc.shape(0), cols = acc.shape(1);
    const float* rp = c_array<float>(row_scale, "dequantize_int32: row_scale");
    const float* cp = c_array<float>(col_scale, "dequantize_int32: col_scale");
    if (row_scale.size() != rows) throw std::invalid_argument("dequantize_int32: row_scale needs one value per row");
    if (col_scale.size() != cols)
      throw std::invalid_argument("dequantize_int32: col_scale needs one value per column");
    const float* bp = nullptr;
    if (!bias.is_none()) {
      py::array b = bias.cast<py::array>();
      bp = c_array<float>(b, "dequantize_int32: bias");
      if (b.size() != cols) throw std::invalid_argument("dequantize_int32: bias needs one value per column");
    }
    float* op = c_array_mut<float>(out, "dequantize_int32: out");
    if (out.ndim() != 2 || out.shape(0) != rows || out.shape(1) != cols)
      throw std::invalid_argument("dequantize_int32: out must have acc's shape");
    {
      py::gil_scoped_release nogil;
      mpq::dequantize_int32(ap, rows, cols, rp, cp, bp, op, threads);
    }
  }, py::arg("acc"), py::arg("row_scale"), py::arg("col_scale"), py::arg("bias"), py::arg("out"),
  py::arg("threads") = 1, "out = acc * (row_scale[:, None] * col_scale[None, :]) + bias, in one pass.");
}
