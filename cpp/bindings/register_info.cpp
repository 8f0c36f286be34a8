#include <pybind11/pybind11.h>

#include "arrays.hpp"
#include "blas.hpp"
#include "common.hpp"
#include "fixed_order.hpp"

namespace py = pybind11;
using namespace ntkal::bind;

#ifndef NTKAL_VERSION
#define NTKAL_VERSION "dev"
#endif

void register_info(py::module_& m) {
  m.attr("__version__") = NTKAL_VERSION;
  m.attr("blas_provider") = ntkal::blas::provider();
  m.def("set_num_threads", &ntkal::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &ntkal::get_num_threads);
  m.def("kernel_set", &ntkal::fixed::kernel_set);
  m.def("all_finite_f32", [](const F32& a) {
    const float* p = a.data();
    const int64_t n = a.size();
    py::gil_scoped_release release;
    return ntkal::all_finite(p, n);
  });
  m.def("all_finite_f64", [](const F64& a) {
    const double* p = a.data();
    const int64_t n = a.size();
    py::gil_scoped_release release;
    return ntkal::all_finite(p, n);
  });
}
