// Bindings of mpq/formats.hpp. Tensors cross as numpy views of torch storage: float32 as float32, bf16/fp16 as
// uint16 bits with a dtype tag (numpy has no bf16).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "array_args.hpp"
#include "mpq/formats.hpp"

namespace py = pybind11;
using mpq_py::c_array;
using mpq_py::c_array_mut;

namespace {

mpq::DType dtype_of(int tag) {
  if (tag < 0 || tag > 2) throw std::invalid_argument("dtype tag must be 0 (f32), 1 (bf16) or 2 (f16)");
  return static_cast<mpq::DType>(tag);
}

const void* data_of(const py::array& a, mpq::DType d, const char* what) {
  return d == mpq::DType::kF32 ? static_cast<const void*>(c_array<float>(a, what))
                               : static_cast<const void*>(c_array<uint16_t>(a, what));
}

void* data_of_mut(py::array& a, mpq::DType d, const char* what) {
  return d == mpq::DType::kF32 ? static_cast<void*>(c_array_mut<float>(a, what))
                               : static_cast<void*>(c_array_mut<uint16_t>(a, what));
}

py::dict format_info(const std::string& name) {
  const mpq::Format& f = mpq::format_by_name(name);
  py::dict d;
  d["name"] = f.name;
  d["is_int"] = f.is_int;
  d["bits"] = f.bits();
  d["mbits"] = f.mbits;
  d["emin"] = f.emin;
  d["max"] = f.max;
  d["saturate"] = f.saturate;
  d["neg_zero"] = f.neg_zero;
  d["asymmetric"] = f.asymmetric;
  d["qmin"] = f.qmin;
  d["qmax"] = f.qmax;
  const char* rules[] = {"none", "maxabs", "pow2", "hw"};
  d["default_rule"] = rules[static_cast<int>(f.default_rule)];
  d["hw_scales"] = f.hw_scales;
  return d;
}

}  // namespace

void bind_formats(py::module_& m) {
  m.def("format_names", &mpq::format_names, "Every known element format name.");
  m.def("format_info", &format_info, py::arg("name"), "The parameters of one format as a dict.");

  m.def(
      "compute_scales",
      [](const py::array& x, int dtype, std::size_t block, const std::string& fmt, const std::string& rule,
         int num_threads) {
        const mpq::DType d = dtype_of(dtype);
        const void* xp = data_of(x, d, "compute_scales: x");
        const std::size_t n = static_cast<std::size_t>(x.size());
        const mpq::Format& f = mpq::format_by_name(fmt);
        const mpq::ScaleRule r = mpq::scale_rule_by_name(rule);
        const py::ssize_t blocks = block ? static_cast<py::ssize_t>(n / block) : 0;
        py::array_t<float> scales(blocks), zps(blocks);
        float* sp = scales.mutable_data();
        float* zp = zps.mutable_data();
        {
          py::gil_scoped_release nogil;
          mpq::compute_scales(xp, d, n, block, f, r, sp, zp, num_threads);
        }
        return py::make_tuple(scales, zps);
      },
      py::arg("x"), py::arg("dtype"), py::arg("block"), py::arg("fmt"), py::arg("rule"), py::arg("num_threads") = 1,
      "Per-block scales and zero points of x (n values, blocks of `block`) by a scale rule.");

  m.def(
      "fake_quantize_into",
      [](const py::array& x, py::array& y, int dtype, std::size_t block, const std::string& fmt,
         const py::array& scales, const py::array& zero_points, int num_threads) {
        const mpq::DType d = dtype_of(dtype);
        const void* xp = data_of(x, d, "fake_quantize: x");
        void* yp = data_of_mut(y, d, "fake_quantize: out");
        if (x.size() != y.size()) throw std::invalid_argument("fake_quantize: x and out differ in size");
        const float* sp = c_array<float>(scales, "fake_quantize: scales");
        const float* zp = c_array<float>(zero_points, "fake_quantize: zero_points");
        const mpq::Format& f = mpq::format_by_name(fmt);
        const std::size_t n = static_cast<std::size_t>(x.size());
        py::gil_scoped_release nogil;
        mpq::fake_quantize(xp, yp, d, n, block, f, {sp, static_cast<std::size_t>(scales.size())},
                           {zp, static_cast<std::size_t>(zero_points.size())}, num_threads);
      },
      py::arg("x"), py::arg("out"), py::arg("dtype"), py::arg("block"), py::arg("fmt"), py::arg("scales"),
      py::arg("zero_points"), py::arg("num_threads") = 1,
      "Fake-quantizes x into out with given per-block scales (one, or one per block).");

  m.def(
      "fake_quantize_auto_into",
      [](const py::array& x, py::array& y, int dtype, std::size_t block, const std::string& fmt,
         const std::string& rule, int num_threads) {
        const mpq::DType d = dtype_of(dtype);
        const void* xp = data_of(x, d, "fake_quantize: x");
        void* yp = data_of_mut(y, d, "fake_quantize: out");
        if (x.size() != y.size()) throw std::invalid_argument("fake_quantize: x and out differ in size");
        const mpq::Format& f = mpq::format_by_name(fmt);
        const mpq::ScaleRule r = mpq::scale_rule_by_name(rule);
        const std::size_t n = static_cast<std::size_t>(x.size());
        py::gil_scoped_release nogil;
        mpq::fake_quantize_auto(xp, yp, d, n, block, f, r, num_threads);
      },
      py::arg("x"), py::arg("out"), py::arg("dtype"), py::arg("block"), py::arg("fmt"), py::arg("rule"),
      py::arg("num_threads") = 1, "Computes per-block scales by a rule, then fake-quantizes x into out.");
}
