// ntkal._core: private bindings of the C++ engine. The public API lives in python/ntkal.
#include <pybind11/pybind11.h>

#include "common.hpp"

namespace py = pybind11;

void register_errors(py::module_& m);
void register_options(py::module_& m);
void register_sketch(py::module_& m);
void register_posterior(py::module_& m);
void register_select(py::module_& m);
void register_block_traces(py::module_& m);
void register_info(py::module_& m);
void register_cuda(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "ntkal engine bindings (private; use the ntkal package)";
  register_errors(m);
  register_options(m);
  register_sketch(m);
  register_posterior(m);
  register_select(m);
  register_block_traces(m);
  register_info(m);
  register_cuda(m);
}
