// The module root of mpq._core: version, ISA control, and the per-topic binding files; each
// cpp/python/bind_<topic>.cpp defines bind_<topic>(), called here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "mpq/isa.hpp"

namespace py = pybind11;

void bind_formats(py::module_& m);
void bind_mckp(py::module_& m);
void bind_sensitivity(py::module_& m);
void bind_int8(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "mpq's C++ core: numeric formats, sensitivity kernels, the MCKP solver";
  m.attr("__version__") = MPQ_VERSION;
  m.def("isa", [] { return std::string(mpq::to_string(mpq::active_isa())); },
        "The SIMD level the kernels use now (scalar, avx2, avx512).");
  m.def("available_isas", &mpq::available_isas, "Every SIMD level this CPU supports, lowest first.");
  m.def("_set_isa", &mpq::set_isa, py::arg("name"), "Test hook: selects a SIMD level (ValueError if unsupported).");
  bind_formats(m);
  bind_mckp(m);
  bind_sensitivity(m);
  bind_int8(m);
}
