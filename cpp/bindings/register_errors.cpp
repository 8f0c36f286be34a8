#include <pybind11/pybind11.h>

#include "common.hpp"

namespace py = pybind11;

void register_errors(py::module_& m) {
  py::register_exception<ntkal::InvalidArgument>(m, "InvalidArgumentError", PyExc_ValueError);
  py::register_exception<ntkal::NumericalError>(m, "NumericalError", PyExc_ArithmeticError);
}
