// Placeholder until the CUDA bindings land: reports that no CUDA backend is compiled in.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_cuda(py::module_& m) { m.attr("cuda_compiled") = false; }
