#include <string>
#include <vector>

#include "arrays.hpp"
#include "posterior.hpp"

namespace py = pybind11;
using namespace ntkal;
using namespace ntkal::bind;

static py::array_t<double> square(std::vector<double>&& v, int64_t d) {
  py::array_t<double> out({d, d});
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void register_posterior(py::module_& m) {
  py::class_<Posterior>(m, "Posterior")
      .def(py::init<int64_t, double, bool, Precision>(),
           py::arg("dim"), py::arg("noise_var"), py::arg("scale"), py::arg("precision"))
      .def("copy", [](const Posterior& p) { return new Posterior(p); })
      .def("add",
           [](Posterior& p, const F32& rows, int64_t n_blocks) {
             RowsView r = rows_view(rows, "Posterior.add");
             py::gil_scoped_release release;
             p.add(r.data, r.n_rows, n_blocks);
           })
      .def("variance",
           [](const Posterior& p, const F32& rows, const py::object& offsets, bool intensive) {
             BlocksView b = blocks_view(rows, offsets, "Posterior.variance");
             py::array_t<double> out(b.n_blocks);
             double* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               p.variance(b, intensive, o);
             }
             return out;
           })
      .def("whiten",
           [](const Posterior& p, const F32& rows) {
             RowsView r = rows_view(rows, "Posterior.whiten");
             py::array_t<double> out({r.n_rows, r.dim});
             double* o = out.mutable_data();
             {
               py::gil_scoped_release release;
               p.whiten(r.data, r.n_rows, o);
             }
             return out;
           })
      .def_property_readonly("dim", &Posterior::dim)
      .def_property_readonly("noise_var", &Posterior::noise_var)
      .def_property_readonly("scale", &Posterior::scale)
      .def_property_readonly("precision", &Posterior::precision)
      .def_property_readonly("n_rows", &Posterior::n_rows)
      .def_property_readonly("n_blocks", &Posterior::n_blocks)
      .def_property_readonly("feature_scale",
                             [](const Posterior& p) {
                               py::gil_scoped_release release;
                               return p.feature_scale();
                             })
      .def_property_readonly("jitter", &Posterior::jitter)
      .def_property_readonly("cholesky",
                             [](const Posterior& p) {
                               std::vector<double> l;
                               {
                                 py::gil_scoped_release release;
                                 l = p.cholesky();
                               }
                               return square(std::move(l), p.dim());
                             })
      .def("whitening_operator",
           [](const Posterior& p) {
             std::vector<double> m;
             {
               py::gil_scoped_release release;
               m = p.whitening_operator();
             }
             return square(std::move(m), p.dim());
           },
           "sqrt(c) L^{-1} as float64 (dim, dim), lower triangular: the operator both backends whiten with.");
}
