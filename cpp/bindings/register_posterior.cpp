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
  m.def("training_gram",
        [](const F32& rows) {
          RowsView r = rows_view(rows, "training_gram");
          py::array_t<double> out({r.dim, r.dim});
          double* o = out.mutable_data();
          {
            py::gil_scoped_release release;
            training_gram(r.data, r.n_rows, r.dim, o);
          }
          for (int64_t i = 0; i < r.dim; ++i)
            for (int64_t j = i + 1; j < r.dim; ++j) o[i * r.dim + j] = o[j * r.dim + i];
          return out;
        },
        py::arg("rows"), "sum_r phi_r^T phi_r in float64 (dim, dim), symmetric: one chunk's partial Gram.");
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
      .def("add_gram",
           [](Posterior& p, const py::array_t<double, py::array::c_style | py::array::forcecast>& gram,
              int64_t n_rows, int64_t n_blocks) {
             if (gram.ndim() != 2 || gram.shape(0) != p.dim() || gram.shape(1) != p.dim())
               throw InvalidArgument("Posterior.add_gram: gram must have shape (dim, dim) = (" +
                                     std::to_string(p.dim()) + ", " + std::to_string(p.dim()) + ")");
             if (n_rows < 0 || n_blocks < 0)
               throw InvalidArgument("Posterior.add_gram: n_rows and n_blocks must be >= 0");
             const double* g = gram.data();
             py::gil_scoped_release release;
             p.add_gram(g, n_rows, n_blocks);
           })
      .def_property_readonly("gram",
                             [](const Posterior& p) {
                               std::vector<double> g = p.gram();
                               const int64_t d = p.dim();
                               for (int64_t i = 0; i < d; ++i)
                                 for (int64_t j = i + 1; j < d; ++j) g[i * d + j] = g[j * d + i];
                               return square(std::move(g), d);
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
