// Bindings of the CUDA backend (cuda/ntkal_cuda.hpp) as the submodule ntkal._core.cuda. Device
// arrays cross the boundary as one small struct, DeviceMatrix (pointer, shape, leading dimension,
// dtype, stream), filled field by field by ntkal.backends.cuda after it has normalised CuPy /
// PyTorch / __cuda_array_interface__ arrays (pybind11 has no DLPack caster). Vocabularies arrive as
// the enums of options.hpp. Everything here is private API.
//
// Without NTKAL_WITH_CUDA (nvcc not found at build time) only `cuda_compiled = False` is defined.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

#ifndef NTKAL_WITH_CUDA

void register_cuda(py::module_& m) { m.attr("cuda_compiled") = false; }

#else

#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "ntkal_cuda.hpp"

namespace {

namespace cu = ntkal::cuda;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// A device matrix (a vector is rows x 1): what one device array is, for the kernels.
struct DeviceMatrix {
  uintptr_t ptr = 0;
  int64_t rows = 0, cols = 0, ld = 0;  // ld: elements between rows
  std::string dtype = "float32";       // float32, float64 or int64
  uintptr_t stream = 0;                // cudaStream_t of the caller's current stream
  template <class T>
  T* data() const {
    return reinterpret_cast<T*>(ptr);
  }
  void* cuda_stream() const { return reinterpret_cast<void*>(stream); }
  void expect(const char* type, const char* where) const {
    if (dtype != type)
      throw ntkal::InvalidArgument(std::string(where) + ": expected a " + type + " device array, got " + dtype);
  }
};

// Host copy of offsets (n_blocks + 1) or nullptr for None.
const int64_t* host_offsets(const py::object& offsets, I64& holder, int64_t n_blocks, const char* where) {
  if (offsets.is_none()) return nullptr;
  holder = offsets.cast<I64>();
  if (holder.ndim() != 1 || holder.shape(0) != n_blocks + 1)
    throw ntkal::InvalidArgument(std::string(where) + ": host offsets must have n_blocks + 1 entries");
  return holder.data();
}

}  // namespace

void register_cuda(py::module_& m) {
  m.attr("cuda_compiled") = true;
  py::module_ c = m.def_submodule("cuda", "CUDA kernels of ntkal (private; use the ntkal package)");
  c.attr("runtime_version") = cu::runtime_version();

  py::class_<DeviceMatrix>(c, "DeviceMatrix")
      .def(py::init<>())
      .def_readwrite("ptr", &DeviceMatrix::ptr)
      .def_readwrite("rows", &DeviceMatrix::rows)
      .def_readwrite("cols", &DeviceMatrix::cols)
      .def_readwrite("ld", &DeviceMatrix::ld)
      .def_readwrite("dtype", &DeviceMatrix::dtype)
      .def_readwrite("stream", &DeviceMatrix::stream);

  c.def("device_count", &cu::device_count);
  c.def("device_names", &cu::device_names);
  c.def("synchronize", [](uintptr_t stream) {
    py::gil_scoped_release release;
    cu::synchronize(reinterpret_cast<void*>(stream));
  });
  c.def("scratch_peak_bytes", [](int device, bool reset) {
    py::gil_scoped_release release;
    return cu::scratch_peak_bytes(device, reset);
  }, py::arg("device"), py::arg("reset"));

  c.def("count_nonfinite",
        [](const DeviceMatrix& x) {
          py::gil_scoped_release release;
          if (x.dtype == "float32") return cu::count_nonfinite(x.data<const float>(), x.rows, x.cols, x.ld, x.cuda_stream());
          if (x.dtype == "float64") return cu::count_nonfinite(x.data<const double>(), x.rows, x.cols, x.ld, x.cuda_stream());
          throw ntkal::InvalidArgument("count_nonfinite: dtype must be float32 or float64, got " + x.dtype);
        },
        py::arg("x"));

  c.def("sketch_project",
        [](ntkal::SketchKind kind, uint64_t seed, int nnz, int64_t n_params, int64_t dim, const DeviceMatrix& j,
           int64_t col_offset, const DeviceMatrix& out) {
          out.expect("float32", "Sketch.project (out)");
          const cu::SketchSpec spec{kind, seed, nnz, n_params, dim};
          py::gil_scoped_release release;
          if (j.dtype == "float32")
            cu::sketch_project(spec, j.data<const float>(), j.rows, j.cols, j.ld, col_offset, out.data<float>(), out.ld,
                               j.cuda_stream());
          else if (j.dtype == "float64")
            cu::sketch_project(spec, j.data<const double>(), j.rows, j.cols, j.ld, col_offset, out.data<float>(),
                               out.ld, j.cuda_stream());
          else
            throw ntkal::InvalidArgument("Sketch.project: J must be float32 or float64, got " + j.dtype);
        },
        py::arg("kind"), py::arg("seed"), py::arg("nnz"), py::arg("n_params"), py::arg("dim"), py::arg("J"),
        py::arg("col_offset"), py::arg("out"));

  c.def("sketch_dense",
        [](ntkal::SketchKind kind, uint64_t seed, int nnz, int64_t n_params, int64_t dim, int64_t p_begin,
           const DeviceMatrix& out) {
          out.expect("float64", "Sketch.dense (out)");
          const cu::SketchSpec spec{kind, seed, nnz, n_params, dim};
          py::gil_scoped_release release;
          cu::sketch_dense(spec, p_begin, p_begin + out.rows, out.data<double>(), out.cuda_stream());
        },
        py::arg("kind"), py::arg("seed"), py::arg("nnz"), py::arg("n_params"), py::arg("dim"), py::arg("p_begin"),
        py::arg("out"));

  c.def("block_variance",
        [](const DeviceMatrix& rows, const DeviceMatrix& whiten, const DeviceMatrix& offsets, int64_t n_blocks,
           double noise_var, bool intensive, ntkal::Matmul matmul, const DeviceMatrix& out) {
          rows.expect("float32", "Posterior.variance (rows)");
          out.expect("float64", "Posterior.variance (out)");
          py::gil_scoped_release release;
          const int64_t* off = offsets.data<const int64_t>();
          if (whiten.dtype == "float32")
            cu::block_variance(rows.data<const float>(), rows.rows, rows.cols, whiten.data<const float>(), off,
                               n_blocks, noise_var, intensive, matmul, out.data<double>(), rows.cuda_stream());
          else if (whiten.dtype == "float64")
            cu::block_variance(rows.data<const float>(), rows.rows, rows.cols, whiten.data<const double>(), off,
                               n_blocks, noise_var, intensive, out.data<double>(), rows.cuda_stream());
          else
            throw ntkal::InvalidArgument("Posterior.variance: whitening operator must be float32 or float64");
        },
        py::arg("rows"), py::arg("whiten"), py::arg("offsets"), py::arg("n_blocks"), py::arg("noise_var"),
        py::arg("intensive"), py::arg("matmul"), py::arg("out"));

  c.def("top_k",
        [](const DeviceMatrix& values, const DeviceMatrix& out_values, const DeviceMatrix& out_positions) {
          values.expect("float64", "top_k (values)");
          py::gil_scoped_release release;
          cu::top_k(values.data<const double>(), nullptr, values.rows, 0, out_values.rows, out_values.data<double>(),
                    out_positions.data<int64_t>(), values.cuda_stream());
        },
        py::arg("values"), py::arg("out_values"), py::arg("out_positions"));

  c.def("select_greedy_pv",
        [](const DeviceMatrix& rows, const py::object& offsets_host, const DeviceMatrix& offsets, int64_t n_blocks,
           const DeviceMatrix& whiten, double noise_var, const DeviceMatrix& out_indices,
           const DeviceMatrix& out_scores) {
          rows.expect("float32", "select (rows)");
          whiten.expect("float64", "select (whitening operator)");
          I64 holder;
          const int64_t* oh = host_offsets(offsets_host, holder, n_blocks, "select");
          py::gil_scoped_release release;
          cu::select_greedy_pv(rows.data<const float>(), rows.rows, rows.cols, oh, offsets.data<const int64_t>(),
                               n_blocks, whiten.data<const double>(), noise_var, out_indices.rows,
                               out_indices.data<int64_t>(), out_scores.data<double>(), rows.cuda_stream());
        },
        py::arg("rows"), py::arg("offsets_host"), py::arg("offsets"), py::arg("n_blocks"), py::arg("whiten"),
        py::arg("noise_var"), py::arg("out_indices"), py::arg("out_scores"));

  c.def("select_by_distance",
        [](ntkal::DistanceMethod method, const DeviceMatrix& x, const DeviceMatrix& train, ntkal::Precision init,
           const DeviceMatrix& out_indices, const DeviceMatrix& out_scores) {
          x.expect("float32", "select (vectors)");
          py::gil_scoped_release release;
          cu::select_by_distance(method, x.data<const float>(), x.rows, train.data<const float>(), train.rows, x.cols,
                                 out_indices.rows, init, out_indices.data<int64_t>(), out_scores.data<double>(),
                                 x.cuda_stream());
        },
        py::arg("method"), py::arg("x"), py::arg("train"), py::arg("init"), py::arg("out_indices"),
        py::arg("out_scores"));

  c.def("gram_sketch",
        [](const DeviceMatrix& rows, const py::object& offsets_host, const DeviceMatrix& offsets, int64_t n_blocks,
           uint64_t seed, const DeviceMatrix& out) {
          rows.expect("float32", "gram_sketch (rows)");
          I64 holder;
          const int64_t* oh = host_offsets(offsets_host, holder, n_blocks, "gram_sketch");
          py::gil_scoped_release release;
          cu::gram_sketch(rows.data<const float>(), rows.rows, rows.cols, oh, offsets.data<const int64_t>(), n_blocks,
                          out.cols, seed, out.data<float>(), rows.cuda_stream());
        },
        py::arg("rows"), py::arg("offsets_host"), py::arg("offsets"), py::arg("n_blocks"), py::arg("seed"),
        py::arg("out"));
}

#endif  // NTKAL_WITH_CUDA
