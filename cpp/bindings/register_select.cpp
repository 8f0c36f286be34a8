#include <string>
#include <vector>

#include "arrays.hpp"
#include "nearest_centre.hpp"
#include "select.hpp"
#include "topk.hpp"

namespace py = pybind11;
using namespace ntkal;
using namespace ntkal::bind;

static py::tuple as_tuple(Selection&& s) {
  return py::make_tuple(to_numpy(std::move(s.indices)), to_numpy(std::move(s.scores)));
}

void register_select(py::module_& m) {
  py::class_<TopK>(m, "TopK")
      .def(py::init<int64_t>(), py::arg("k"))
      .def("push",
           [](TopK& t, const F64& values, int64_t base) {
             const double* v = values.data();
             const int64_t n = values.size();
             py::gil_scoped_release release;
             t.push(v, n, base);
           })
      .def("result",
           [](TopK& t) {
             std::vector<int64_t> idx;
             std::vector<double> val;
             {
               py::gil_scoped_release release;
               t.result(idx, val);
             }
             return py::make_tuple(to_numpy(std::move(idx)), to_numpy(std::move(val)));
           });

  m.def("select_greedy_pv",
        [](const Posterior& post, const F32& rows, const py::object& offsets, int64_t n) {
          BlocksView b = blocks_view(rows, offsets, "select");
          Selection s;
          {
            py::gil_scoped_release release;
            s = select_greedy_pv(post, b, n);
          }
          return as_tuple(std::move(s));
        },
        py::arg("posterior"), py::arg("rows"), py::arg("offsets"), py::arg("n"));

  m.def("select_by_distance",
        [](DistanceMethod method, const F32& x, const py::object& train, int64_t n, Precision precision) {
          RowsView xv = rows_view(x, "select");
          RowsView tv{nullptr, 0, xv.dim};
          F32 tarr;
          if (!train.is_none()) {
            tarr = train.cast<F32>();
            tv = rows_view(tarr, "select");
          }
          Selection s;
          {
            py::gil_scoped_release release;
            s = select_by_distance(method, xv, tv, n, precision);
          }
          return as_tuple(std::move(s));
        },
        py::arg("method"), py::arg("vectors"), py::arg("train_vectors"), py::arg("n"), py::arg("precision"));

  m.def("nearest_train",
        [](const F32& x, const F32& train, Precision precision) {
          RowsView xv = rows_view(x, "nearest_train"), tv = rows_view(train, "nearest_train");
          if (tv.dim != xv.dim || tv.n_rows == 0)
            throw InvalidArgument("nearest_train: train must be non-empty with the vectors' width " +
                                  std::to_string(xv.dim));
          std::vector<int64_t> owner(static_cast<size_t>(xv.n_rows), -1);
          bool projected = false;
          {
            py::gil_scoped_release release;
            projected = nearest_train(xv, tv, precision, owner);
          }
          return py::make_tuple(to_numpy(std::move(owner)), projected);
        },
        py::arg("vectors"), py::arg("train_vectors"), py::arg("precision"),
        "(nearest train index of every vector, whether the projected-bounds route decided it).");

  m.def("gram_sketch",
        [](const F32& rows, const py::object& offsets, int64_t out_dim, uint64_t seed) {
          BlocksView b = blocks_view(rows, offsets, "gram_sketch");
          py::array_t<float> out({b.n_blocks, out_dim});
          float* o = out.mutable_data();
          {
            py::gil_scoped_release release;
            gram_sketch(b, out_dim, seed, o);
          }
          return out;
        },
        py::arg("rows"), py::arg("offsets"), py::arg("out_dim"), py::arg("seed"));
}
