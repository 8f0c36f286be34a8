#include <string>
#include <vector>

#include "arrays.hpp"
#include "posterior.hpp"

namespace py = pybind11;
using namespace ntkal;
using namespace ntkal::bind;

Precision parse_precision(const std::string& p) {
  if (p == "float32") return Precision::Float32;
  if (p == "float64") return Precision::Float64;
  throw InvalidArgument("precision must be 'float32' or 'float64', got '" + p + "'");
}

static py::array_t<double> square(std::vector<double>&& v, int64_t d) {
  py::array_t<double> out({d, d});
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void register_posterior(py::module_& m) {
  py::class_<Posterior>(m, "Posterior")
      .def(py::init([](int64_t dim, double noise_var, bool scale, const std::string& precision) {
             return new Posterior(dim, noise_var, scale, parse_precision(precision));
           }),
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
      .def_property_readonly("precision",
                             [](const Posterior& p) {
                               return p.precision() == Precision::Float32 ? "float32" : "float64";
                             })
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
      .def_property_readonly("gram", [](const Posterior& p) { return square(p.gram(), p.dim()); });
}
