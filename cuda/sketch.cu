// Sketch projection out += J S[col_offset : col_offset + p_chunk] on the GPU. S is generated on the
// fly from philox.hpp -- the same functions the CPU Sketch uses -- one tile of parameters at a time:
// * gaussian: the tile S[p0 : p0 + TP, :] is written to scratch memory (entries computed in float64
//   exactly as on the CPU, then rounded to the GEMM type), then one SIMT GEMM adds J_tile S_tile.
//   Each entry is generated once per call and reused by all m rows.
// * sparse_sign: a (bucket, value) table of the tile's nnz entries per parameter, then a scatter
//   kernel: a CTA takes R rows and a parameter range, accumulates in float64 shared memory and adds
//   its partial sums to a float64 accumulator; the accumulator is rounded into `out` once at the end.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "gemm_simt.cuh"
#include "philox.hpp"
#include "sketch_tiles.cuh"

namespace ntkal::cuda {
namespace detail {

constexpr int64_t kTileElems = int64_t(1) << 24;  // entries of S per generated tile (64 MB as float32)

// bucket / value of the nnz entries of parameters p0 .. p0 + n_p (value = sign / sqrt(nnz), float
// as on the CPU).
__global__ void sparse_table_kernel(uint64_t seed, int64_t p0, int64_t n_p, int nnz, uint32_t dim,
                                    uint32_t* __restrict__ bucket, float* __restrict__ value) {
  const double v = 1.0 / sqrt(static_cast<double>(nnz));
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n_p * nnz;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = idx / nnz;
    const int t = static_cast<int>(idx % nnz);
    uint32_t b;
    int sg;
    philox::sparse_entry(seed, static_cast<uint64_t>(p0 + p), static_cast<uint32_t>(t), dim, &b, &sg);
    bucket[idx] = b;
    value[idx] = static_cast<float>(sg * v);
  }
}

constexpr int kSparseRows = 4;         // rows per CTA sharing each table read
constexpr int kSparseWindow = 1280;    // float64 accumulator columns per row in shared memory (40 KB)
constexpr int kSparseThreads = 256;

// acc (m x dim, float64) += J[:, p_begin : p_end] S_tile for the columns [w0, w0 + W) handled by this
// launch; blockIdx.x: row group, blockIdx.y: parameter split.
template <class T>
__global__ void __launch_bounds__(kSparseThreads)
    sparse_project_kernel(const T* __restrict__ j, int64_t ldj, int64_t m, int64_t n_p, int64_t p_split, int nnz,
                          const uint32_t* __restrict__ bucket, const float* __restrict__ value, int64_t dim, int64_t w0,
                          int width, double* __restrict__ acc) {
  __shared__ double s_acc[kSparseRows][kSparseWindow];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kSparseRows;
  const int64_t pb = static_cast<int64_t>(blockIdx.y) * p_split;
  const int64_t pe = pb + p_split < n_p ? pb + p_split : n_p;
  for (int c = threadIdx.x; c < kSparseRows * kSparseWindow; c += blockDim.x) (&s_acc[0][0])[c] = 0.0;
  __syncthreads();
  for (int64_t p = pb + threadIdx.x; p < pe; p += blockDim.x) {
    double x[kSparseRows];
    bool any = false;
#pragma unroll
    for (int r = 0; r < kSparseRows; ++r) {
      x[r] = i0 + r < m ? static_cast<double>(j[(i0 + r) * ldj + p]) : 0.0;
      any |= x[r] != 0.0;
    }
    if (!any) continue;  // Jacobians are often sparse in parameters (unused layers)
    for (int t = 0; t < nnz; ++t) {
      const int64_t b = static_cast<int64_t>(bucket[p * nnz + t]) - w0;
      if (b < 0 || b >= width) continue;
      const double v = static_cast<double>(value[p * nnz + t]);
#pragma unroll
      for (int r = 0; r < kSparseRows; ++r)
        if (x[r] != 0.0) atomicAdd(&s_acc[r][b], v * x[r]);
    }
  }
  __syncthreads();
  for (int r = 0; r < kSparseRows; ++r) {
    if (i0 + r >= m) break;
    double* dst = acc + (i0 + r) * dim + w0;
    for (int c = threadIdx.x; c < width; c += blockDim.x)
      if (s_acc[r][c] != 0.0) atomicAdd(dst + c, s_acc[r][c]);
  }
}

// out (m x dim, ld ldo) += float(acc) (acc m x dim contiguous).
__global__ void add_rounded_kernel(const double* __restrict__ acc, int64_t m, int64_t dim, float* __restrict__ out,
                                   int64_t ldo) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < m * dim;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / dim, c = idx % dim;
    out[i * ldo + c] += static_cast<float>(acc[idx]);
  }
}

int sm_count() {
  int dev = 0, n = 0;
  NTKAL_CUDA_CHECK(cudaGetDevice(&dev));
  NTKAL_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n > 0 ? n : 1;
}

template <class T>
void project_sparse(const SketchSpec& sk, const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                    float* out, int64_t ldo, cudaStream_t s) {
  const int64_t dim = sk.dim, nnz = sk.nnz;
  Scratch<double> acc(m * dim, s);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(acc.get(), 0, sizeof(double) * m * dim, s));
  const int64_t tp = std::min<int64_t>(p_chunk, std::max<int64_t>(1, kTileElems / nnz));
  Scratch<uint32_t> bucket(tp * nnz, s);
  Scratch<float> value(tp * nnz, s);
  const int64_t row_groups = ceil_div(m, kSparseRows);
  const int64_t target_ctas = 4LL * sm_count();
  for (int64_t p0 = 0; p0 < p_chunk; p0 += tp) {
    const int64_t n_p = std::min(tp, p_chunk - p0);
    sparse_table_kernel<<<grid_for(n_p * nnz, 256), 256, 0, s>>>(sk.seed, col_offset + p0, n_p, sk.nnz,
                                                                  static_cast<uint32_t>(dim), bucket.get(),
                                                                  value.get());
    NTKAL_CUDA_LAUNCHED("sparse_table_kernel");
    // split parameters over CTAs only as far as needed to fill the GPU, >= 2048 parameters each
    int64_t splits = std::max<int64_t>(1, target_ctas / row_groups);
    splits = std::min<int64_t>(splits, std::max<int64_t>(1, n_p / 2048));
    splits = std::min<int64_t>(splits, 65535);
    const int64_t p_split = ceil_div(n_p, splits);
    splits = ceil_div(n_p, p_split);
    for (int64_t w0 = 0; w0 < dim; w0 += kSparseWindow) {
      const int width = static_cast<int>(std::min<int64_t>(kSparseWindow, dim - w0));
      dim3 grid(static_cast<unsigned>(row_groups), static_cast<unsigned>(splits));
      sparse_project_kernel<T><<<grid, kSparseThreads, 0, s>>>(j + p0, ldj, m, n_p, p_split, sk.nnz, bucket.get(),
                                                               value.get(), dim, w0, width, acc.get());
      NTKAL_CUDA_LAUNCHED("sparse_project_kernel");
    }
  }
  add_rounded_kernel<<<grid_for(m * dim, 256), 256, 0, s>>>(acc.get(), m, dim, out, ldo);
  NTKAL_CUDA_LAUNCHED("add_rounded_kernel");
}

template <class T>
void project_gaussian(const SketchSpec& sk, const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                      float* out, int64_t ldo, cudaStream_t s) {
  const int64_t dim = sk.dim;
  const int64_t tp = std::min<int64_t>(p_chunk, std::max<int64_t>(Simt<T>::BK, kTileElems / dim));
  Scratch<T> tile(tp * dim, s);
  // float64 J: accumulate every tile in float64 and round once (CPU semantics)
  Scratch<double> acc;
  if constexpr (std::is_same_v<T, double>) {
    acc.reset(m * dim, s);
    NTKAL_CUDA_CHECK(cudaMemsetAsync(acc.get(), 0, sizeof(double) * m * dim, s));
  }
  const int64_t quads = (dim + 3) / 4;
  for (int64_t p0 = 0; p0 < p_chunk; p0 += tp) {
    const int64_t n_p = std::min(tp, p_chunk - p0);
    gaussian_tile_kernel<T><<<grid_for(n_p * quads, 256), 256, 0, s>>>(sk.seed, col_offset + p0, n_p, dim,
                                                                        tile.get(), dim);
    NTKAL_CUDA_LAUNCHED("gaussian_tile_kernel");
    if constexpr (std::is_same_v<T, double>)
      gemm<double, double, double, false>(j + p0, ldj, tile.get(), dim, acc.get(), dim, m, dim, n_p, 1.0, 1.0, s,
                                          true);
    else
      gemm<float, float, float, false>(j + p0, ldj, tile.get(), dim, out, ldo, m, dim, n_p, 1.0f, 1.0f, s, true);
  }
  if constexpr (std::is_same_v<T, double>) {
    add_rounded_kernel<<<grid_for(m * dim, 256), 256, 0, s>>>(acc.get(), m, dim, out, ldo);
    NTKAL_CUDA_LAUNCHED("add_rounded_kernel");
  }
}

void check_spec(const SketchSpec& sk, const char* where) {
  require(sk.n_params > 0 && sk.dim > 0, std::string(where) + ": sketch must have n_params > 0 and dim > 0");
  require(sk.dim < (int64_t(1) << 31), std::string(where) + ": dim must be < 2^31");
  if (sk.kind == SketchKind::SparseSign)
    require(sk.nnz >= 1 && sk.nnz <= sk.dim, std::string(where) + ": nnz must be in [1, dim]");
}

template <class T>
void project_impl(const SketchSpec& sk, const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                  float* out, int64_t ldo, void* stream) {
  check_spec(sk, "Sketch.project");
  require(m >= 0 && p_chunk >= 0, "Sketch.project: J must have a non-negative shape");
  require(ldj >= p_chunk, "Sketch.project: the row stride of J is smaller than its width");
  require(ldo >= sk.dim, "Sketch.project: the row stride of out is smaller than dim");
  require(col_offset >= 0 && col_offset + p_chunk <= sk.n_params,
          "Sketch.project: columns [" + std::to_string(col_offset) + ", " + std::to_string(col_offset + p_chunk) +
              ") fall outside n_params=" + std::to_string(sk.n_params));
  if (m == 0 || p_chunk == 0) return;
  DeviceGuard guard(j);
  cudaStream_t s = as_stream(stream);
  if (sk.kind == SketchKind::Gaussian)
    project_gaussian(sk, j, m, p_chunk, ldj, col_offset, out, ldo, s);
  else
    project_sparse(sk, j, m, p_chunk, ldj, col_offset, out, ldo, s);
}

__global__ void sparse_dense_kernel(uint64_t seed, int64_t p0, int64_t n_p, int nnz, int64_t dim,
                                    double* __restrict__ out) {
  const double v = 1.0 / sqrt(static_cast<double>(nnz));
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < n_p;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x)
    for (int t = 0; t < nnz; ++t) {  // one thread per parameter: repeated buckets add up in order
      uint32_t b;
      int sg;
      philox::sparse_entry(seed, static_cast<uint64_t>(p0 + r), static_cast<uint32_t>(t),
                           static_cast<uint32_t>(dim), &b, &sg);
      out[r * dim + b] += sg * v;
    }
}

}  // namespace detail

void sketch_project(const SketchSpec& s, const float* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                    float* out, int64_t ldo, void* stream) {
  detail::project_impl(s, j, m, p_chunk, ldj, col_offset, out, ldo, stream);
}

void sketch_project(const SketchSpec& s, const double* j, int64_t m, int64_t p_chunk, int64_t ldj,
                    int64_t col_offset, float* out, int64_t ldo, void* stream) {
  detail::project_impl(s, j, m, p_chunk, ldj, col_offset, out, ldo, stream);
}

void sketch_dense(const SketchSpec& sk, int64_t p_begin, int64_t p_end, double* out, void* stream) {
  using namespace detail;
  check_spec(sk, "Sketch.dense");
  require(p_begin >= 0 && p_begin <= p_end && p_end <= sk.n_params, "Sketch.dense: parameter range outside [0, n_params)");
  const int64_t n_p = p_end - p_begin;
  if (n_p == 0) return;
  DeviceGuard guard(out);
  cudaStream_t s = as_stream(stream);
  if (sk.kind == SketchKind::Gaussian) {
    gaussian_tile_kernel<double><<<grid_for(n_p * ((sk.dim + 3) / 4), 256), 256, 0, s>>>(sk.seed, p_begin, n_p, sk.dim,
                                                                                          out, sk.dim);
    NTKAL_CUDA_LAUNCHED("gaussian_tile_kernel");
  } else {
    NTKAL_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * n_p * sk.dim, s));
    sparse_dense_kernel<<<grid_for(n_p, 256), 256, 0, s>>>(sk.seed, p_begin, n_p, sk.nnz, sk.dim, out);
    NTKAL_CUDA_LAUNCHED("sparse_dense_kernel");
  }
}

}  // namespace ntkal::cuda
