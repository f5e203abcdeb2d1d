// Shared by the binding files: accept only the exact dtype, C-contiguous, never copy silently.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

namespace mpq_py {
namespace py = pybind11;

template <class T>
void check_array(const py::array& a, const char* what) {
  if (!py::isinstance<py::array_t<T, py::array::c_style>>(a))
    throw std::invalid_argument(std::string(what) + ": expected a C-contiguous " +
                                py::str(py::dtype::of<T>()).cast<std::string>() + " array, got " +
                                (a.flags() & py::array::c_style ? "" : "non-contiguous ") +
                                py::str(a.dtype()).cast<std::string>());
}

template <class T>
const T* c_array(const py::array& a, const char* what) {
  check_array<T>(a, what);
  return static_cast<const T*>(a.data());
}

template <class T>
T* c_array_mut(py::array& a, const char* what) {
  check_array<T>(a, what);
  if (!a.writeable()) throw std::invalid_argument(std::string(what) + ": array is read-only");
  return static_cast<T*>(a.mutable_data());
}

}  // namespace mpq_py
