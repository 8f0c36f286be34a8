// Bindings of the CUDA backend (cuda/ntkal_cuda.hpp) into ntkal._core. Device arrays cross the
// boundary as raw pointers (Python ints) with their sizes and the caller's stream handle: pybind11
// has no DLPack caster, so ntkal._cuda_backend normalises CuPy / PyTorch / __cuda_array_interface__
// arrays and validates shapes before calling these. Everything here is private API.
//
// Without NTKAL_WITH_CUDA (nvcc not found at build time) only `cuda_compiled = False` is defined.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

#ifndef NTKAL_WITH_CUDA

void register_cuda(py::module_& m) { m.attr("cuda_compiled") = false; }

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "ntkal_cuda.hpp"
#include "posterior.hpp"

namespace {

namespace cu = ntkal::cuda;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
void* stream_of(uintptr_t s) { return reinterpret_cast<void*>(s); }

cu::SketchSpec sketch_spec(const std::string& kind, uint64_t seed, int nnz, int64_t n_params, int64_t dim) {
  cu::SketchKind k;
  if (kind == "gaussian")
    k = cu::SketchKind::Gaussian;
  else if (kind == "sparse_sign")
    k = cu::SketchKind::SparseSign;
  else
    throw ntkal::InvalidArgument("Sketch: kind must be 'sparse_sign' or 'gaussian', got '" + kind + "'");
  return cu::SketchSpec{k, seed, nnz, n_params, dim};
}

cu::Matmul parse_matmul(const std::string& s) {
  if (s == "float32") return cu::Matmul::Float32;
  if (s == "tf32") return cu::Matmul::TF32;
  if (s == "bf16") return cu::Matmul::BF16;
  throw ntkal::InvalidArgument("matmul must be 'float32', 'tf32' or 'bf16', got '" + s + "'");
}

// Host copy of offsets (n_blocks + 1) or nullptr for None.
const int64_t* host_offsets(const py::object& offsets, I64& holder, int64_t n_blocks, const char* where) {
  if (offsets.is_none()) return nullptr;
  holder = offsets.cast<I64>();
  if (holder.ndim() != 1 || holder.shape(0) != n_blocks + 1)
    throw ntkal::InvalidArgument(std::string(where) + ": host offsets must have n_blocks + 1 entries");
  return holder.data();
}

// M = sqrt(c) L^{-1} (float64, lower triangular, row-major): the engine's whitening operator.
py::array_t<double> whitening_operator(const ntkal::Posterior& post) {
  const int64_t d = post.dim();
  std::vector<double> op;
  {
    py::gil_scoped_release release;
    op = post.whitening_operator();
  }
  py::array_t<double> out({d, d});
  std::copy(op.begin(), op.end(), out.mutable_data());
  return out;
}

}  // namespace

void register_cuda(py::module_& m) {
  m.attr("cuda_compiled") = true;
  m.attr("cuda_runtime_version") = cu::runtime_version();
  m.def("cuda_device_count", &cu::device_count);
  m.def("cuda_device_names", &cu::device_names);
  m.def("cuda_driver_version", &cu::driver_version);
  m.def("cuda_pointer_device", [](uintptr_t p) { return cu::pointer_device(ptr<const void>(p)); }, py::arg("ptr"));
  m.def("cuda_synchronize", [](uintptr_t stream) {
    py::gil_scoped_release release;
    cu::synchronize(stream_of(stream));
  }, py::arg("stream"));
  m.def("cuda_scratch_peak_bytes", [](int device, bool reset) {
    py::gil_scoped_release release;
    return cu::scratch_peak_bytes(device, reset);
  }, py::arg("device"), py::arg("reset"));
  m.def("cuda_whitening_operator", &whitening_operator, py::arg("posterior"),
        "sqrt(c) L^{-1} of a _core.Posterior as float64 (dim, dim), lower triangular.");

  m.def("cuda_count_nonfinite",
        [](uintptr_t x, int64_t rows, int64_t cols, int64_t ld, const std::string& dtype, uintptr_t stream) {
          py::gil_scoped_release release;
          if (dtype == "float32") return cu::count_nonfinite(ptr<const float>(x), rows, cols, ld, stream_of(stream));
          if (dtype == "float64") return cu::count_nonfinite(ptr<const double>(x), rows, cols, ld, stream_of(stream));
          throw ntkal::InvalidArgument("cuda_count_nonfinite: dtype must be float32 or float64");
        },
        py::arg("x"), py::arg("rows"), py::arg("cols"), py::arg("ld"), py::arg("dtype"), py::arg("stream"));

  m.def("cuda_sketch_project",
        [](const std::string& kind, uint64_t seed, int nnz, int64_t n_params, int64_t dim, uintptr_t j,
           const std::string& j_dtype, int64_t rows, int64_t p_chunk, int64_t ldj, int64_t col_offset, uintptr_t out,
           int64_t ldo, uintptr_t stream) {
          const cu::SketchSpec spec = sketch_spec(kind, seed, nnz, n_params, dim);
          py::gil_scoped_release release;
          if (j_dtype == "float32")
            cu::sketch_project(spec, ptr<const float>(j), rows, p_chunk, ldj, col_offset, ptr<float>(out), ldo,
                               stream_of(stream));
          else if (j_dtype == "float64")
            cu::sketch_project(spec, ptr<const double>(j), rows, p_chunk, ldj, col_offset, ptr<float>(out), ldo,
                               stream_of(stream));
          else
            throw ntkal::InvalidArgument("Sketch.project: J must be float32 or float64");
        },
        py::arg("kind"), py::arg("seed"), py::arg("nnz"), py::arg("n_params"), py::arg("dim"), py::arg("J"),
        py::arg("J_dtype"), py::arg("m"), py::arg("p_chunk"), py::arg("ldj"), py::arg("col_offset"), py::arg("out"),
        py::arg("ldo"), py::arg("stream"));

  m.def("cuda_sketch_dense",
        [](const std::string& kind, uint64_t seed, int nnz, int64_t n_params, int64_t dim, int64_t p_begin,
           int64_t p_end, uintptr_t out, uintptr_t stream) {
          const cu::SketchSpec spec = sketch_spec(kind, seed, nnz, n_params, dim);
          py::gil_scoped_release release;
          cu::sketch_dense(spec, p_begin, p_end, ptr<double>(out), stream_of(stream));
        },
        py::arg("kind"), py::arg("seed"), py::arg("nnz"), py::arg("n_params"), py::arg("dim"), py::arg("p_begin"),
        py::arg("p_end"), py::arg("out"), py::arg("stream"));

  m.def("cuda_block_variance",
        [](uintptr_t rows, int64_t n_rows, int64_t dim, uintptr_t whiten, const std::string& whiten_dtype,
           uintptr_t offsets, int64_t n_blocks, double noise_var, bool intensive, const std::string& matmul,
           uintptr_t out, uintptr_t stream) {
          const cu::Matmul mm = parse_matmul(matmul);
          py::gil_scoped_release release;
          if (whiten_dtype == "float32")
            cu::block_variance(ptr<const float>(rows), n_rows, dim, ptr<const float>(whiten),
                               ptr<const int64_t>(offsets), n_blocks, noise_var, intensive, mm, ptr<double>(out),
                               stream_of(stream));
          else if (whiten_dtype == "float64")
            cu::block_variance(ptr<const float>(rows), n_rows, dim, ptr<const double>(whiten),
                               ptr<const int64_t>(offsets), n_blocks, noise_var, intensive, ptr<double>(out),
                               stream_of(stream));
          else
            throw ntkal::InvalidArgument("Posterior.variance: whitening operator must be float32 or float64");
        },
        py::arg("rows"), py::arg("n_rows"), py::arg("dim"), py::arg("whiten"), py::arg("whiten_dtype"),
        py::arg("offsets"), py::arg("n_blocks"), py::arg("noise_var"), py::arg("intensive"), py::arg("matmul"),
        py::arg("out"), py::arg("stream"));

  m.def("cuda_top_k",
        [](uintptr_t values, uintptr_t indices, int64_t n, int64_t base, int64_t k, uintptr_t out_values,
           uintptr_t out_indices, uintptr_t stream) {
          py::gil_scoped_release release;
          cu::top_k(ptr<const double>(values), ptr<const int64_t>(indices), n, base, k, ptr<double>(out_values),
                    ptr<int64_t>(out_indices), stream_of(stream));
        },
        py::arg("values"), py::arg("indices"), py::arg("n"), py::arg("base"), py::arg("k"), py::arg("out_values"),
        py::arg("out_indices"), py::arg("stream"));

  m.def("cuda_select_greedy_pv",
        [](uintptr_t rows, int64_t n_rows, int64_t dim, const py::object& offsets_host, uintptr_t offsets_dev,
           int64_t n_blocks, uintptr_t whiten, double noise_var, int64_t n, uintptr_t out_indices,
           uintptr_t out_scores, uintptr_t stream) {
          I64 holder;
          const int64_t* oh = host_offsets(offsets_host, holder, n_blocks, "select");
          py::gil_scoped_release release;
          cu::select_greedy_pv(ptr<const float>(rows), n_rows, dim, oh, ptr<const int64_t>(offsets_dev), n_blocks,
                               ptr<const double>(whiten), noise_var, n, ptr<int64_t>(out_indices),
                               ptr<double>(out_scores), stream_of(stream));
        },
        py::arg("rows"), py::arg("n_rows"), py::arg("dim"), py::arg("offsets_host"), py::arg("offsets_dev"),
        py::arg("n_blocks"), py::arg("whiten"), py::arg("noise_var"), py::arg("n"), py::arg("out_indices"),
        py::arg("out_scores"), py::arg("stream"));

  m.def("cuda_select_by_distance",
        [](const std::string& method, uintptr_t x, int64_t n_pool, uintptr_t train, int64_t n_train, int64_t e,
           int64_t n, bool float64_init, uintptr_t out_indices, uintptr_t out_scores, uintptr_t stream) {
          cu::DistanceMethod dm;
          if (method == "lcmd")
            dm = cu::DistanceMethod::Lcmd;
          else if (method == "maxdist")
            dm = cu::DistanceMethod::MaxDist;
          else
            throw ntkal::InvalidArgument("select: unknown distance method '" + method + "'");
          py::gil_scoped_release release;
          cu::select_by_distance(dm, ptr<const float>(x), n_pool, ptr<const float>(train), n_train, e, n,
                                 float64_init, ptr<int64_t>(out_indices), ptr<double>(out_scores), stream_of(stream));
        },
        py::arg("method"), py::arg("x"), py::arg("n_pool"), py::arg("train"), py::arg("n_train"), py::arg("e"),
        py::arg("n"), py::arg("float64_init"), py::arg("out_indices"), py::arg("out_scores"), py::arg("stream"));

  m.def("cuda_gram_sketch",
        [](uintptr_t rows, int64_t n_rows, int64_t dim, const py::object& offsets_host, uintptr_t offsets_dev,
           int64_t n_blocks, int64_t out_dim, uint64_t seed, uintptr_t out, uintptr_t stream) {
          I64 holder;
          const int64_t* oh = host_offsets(offsets_host, holder, n_blocks, "gram_sketch");
          py::gil_scoped_release release;
          cu::gram_sketch(ptr<const float>(rows), n_rows, dim, oh, ptr<const int64_t>(offsets_dev), n_blocks, out_dim,
                          seed, ptr<float>(out), stream_of(stream));
        },
        py::arg("rows"), py::arg("n_rows"), py::arg("dim"), py::arg("offsets_host"), py::arg("offsets_dev"),
        py::arg("n_blocks"), py::arg("out_dim"), py::arg("seed"), py::arg("out"), py::arg("stream"));
}

#endif  // NTKAL_WITH_CUDA
