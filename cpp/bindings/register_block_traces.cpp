#include <string>

#include "arrays.hpp"
#include "block_traces.hpp"

namespace py = pybind11;
using namespace ntkal;
using namespace ntkal::bind;

void register_block_traces(py::module_& m) {
  m.def("variance_reduction_scores",
        [](const Posterior& post, const F32& rows, const py::object& offsets, const F64& target_gram,
           const py::array_t<uint8_t, py::array::c_style>& active) {
          const char* where = "variance_reduction_scores";
          BlocksView b = blocks_view(rows, offsets, where);
          const int64_t d = post.dim();
          if (target_gram.ndim() != 2 || target_gram.shape(0) != d || target_gram.shape(1) != d)
            throw InvalidArgument(std::string(where) + ": target_gram must have shape (dim, dim) = (" +
                                  std::to_string(d) + ", " + std::to_string(d) + ")");
          if (active.ndim() != 1 || active.shape(0) != b.n_blocks)
            throw InvalidArgument(std::string(where) + ": active must have one entry per block (" +
                                  std::to_string(b.n_blocks) + ")");
          py::array_t<double> out(b.n_blocks);
          double* o = out.mutable_data();
          {
            py::gil_scoped_release release;
            variance_reduction_scores(post, b, target_gram.data(), active.data(), o);
          }
          return out;
        },
        py::arg("posterior"), py::arg("rows"), py::arg("offsets"), py::arg("target_gram"), py::arg("active"),
        "noise_var tr[(I + S)^{-1} W N W^T] per active block (-inf otherwise), fixed-order kernels.");
  m.def("leave_one_out_variance",
        [](const Posterior& post, const F32& rows, const py::object& offsets, bool intensive) {
          BlocksView b = blocks_view(rows, offsets, "leave_one_out_variance");
          py::array_t<double> out(b.n_blocks);
          double* o = out.mutable_data();
          {
            py::gil_scoped_release release;
            leave_one_out_variance(post, b, intensive, o);
          }
          return out;
        },
        py::arg("posterior"), py::arg("rows"), py::arg("offsets"), py::arg("intensive"),
        "noise_var tr[S (I - S)^{-1}] per block (NaN when empty or unresolvable), fixed-order kernels.");
}
