// The engine's enums (options.hpp), bound once. python/ntkal/options.py maps the names users type
// to these values; no binding parses a string.
#include <pybind11/pybind11.h>

#include "options.hpp"

namespace py = pybind11;

void register_options(py::module_& m) {
  py::enum_<ntkal::SketchKind>(m, "SketchKind")
      .value("Gaussian", ntkal::SketchKind::Gaussian)
      .value("SparseSign", ntkal::SketchKind::SparseSign);
  py::enum_<ntkal::Precision>(m, "Precision")
      .value("Float32", ntkal::Precision::Float32)
      .value("Float64", ntkal::Precision::Float64);
  py::enum_<ntkal::DistanceMethod>(m, "DistanceMethod")
      .value("Lcmd", ntkal::DistanceMethod::Lcmd)
      .value("MaxDist", ntkal::DistanceMethod::MaxDist);
  py::enum_<ntkal::Matmul>(m, "Matmul")
      .value("Float32", ntkal::Matmul::Float32)
      .value("TF32", ntkal::Matmul::TF32)
      .value("BF16", ntkal::Matmul::BF16);
}
