#include <string>

#include "arrays.hpp"
#include "sketch.hpp"

namespace py = pybind11;
using namespace ntkal;
using namespace ntkal::bind;

template <class T>
static void project(const Sketch& s, const py::array_t<T, py::array::c_style>& j, int64_t col_offset, F32& out) {
  if (j.ndim() != 2 || out.ndim() != 2 || out.shape(0) != j.shape(0) || out.shape(1) != s.dim())
    throw InvalidArgument("Sketch.project: J must be (m, P_chunk) and out (m, dim)");
  const T* jp = j.data();
  float* op = out.mutable_data();
  const int64_t m = j.shape(0), p = j.shape(1);
  py::gil_scoped_release release;
  s.project(jp, m, p, p, col_offset, op);
}

void register_sketch(py::module_& m) {
  py::class_<Sketch>(m, "Sketch")
      .def(py::init<int64_t, int64_t, SketchKind, uint64_t, int>(),
           py::arg("n_params"), py::arg("dim"), py::arg("kind"), py::arg("seed"), py::arg("nnz"))
      .def("project_f32", &project<float>, py::arg("J"), py::arg("col_offset"), py::arg("out"))
      .def("project_f64", &project<double>, py::arg("J"), py::arg("col_offset"), py::arg("out"))
      .def("dense",
           [](const Sketch& s, int64_t p0, int64_t p1) {
             if (p0 < 0 || p1 < p0 || p1 > s.n_params())
               throw InvalidArgument("Sketch.dense: parameter range [" + std::to_string(p0) + ", " +
                                     std::to_string(p1) + ") outside [0, " + std::to_string(s.n_params()) + ")");
             py::array_t<double> out({p1 - p0, s.dim()});
             double* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               s.dense(p0, p1, o);
             }
             return out;
           })
      .def_property_readonly("kind", &Sketch::kind)
      .def_property_readonly("n_params", &Sketch::n_params)
      .def_property_readonly("dim", &Sketch::dim)
      .def_property_readonly("seed", &Sketch::seed)
      .def_property_readonly("nnz", &Sketch::nnz);
}
