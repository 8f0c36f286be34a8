// Gram sketch on the GPU, mirroring cpp/distance_vectors.cpp: U, V (d x e) are Gaussian sketches
// with seeds seed ^ kGramSeedU / seed ^ kGramSeedV, rounded to float32; per block
// z_k = sqrt(e) * sum_rows (phi U)_k (phi V)_k accumulated in float64 in row order, one thread per
// (block, k), so results are deterministic and summed in the CPU's order.
#include <algorithm>
#include <cmath>
#include <string>

#include "common.cuh"
#include "gemm_simt.cuh"
#include "sketch_tiles.cuh"

namespace ntkal::cuda {
namespace detail {

// Must equal the constants of cpp/distance_vectors.cpp.
constexpr uint64_t kGramSeedU = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kGramSeedV = 0xC2B2AE3D27D4EB4Full;

// acc[b][k] += sum over rows r in block b and in [r0, r0 + n) of p[r - r0][k] q[r - r0][k].
__global__ void gram_accumulate_kernel(const float* __restrict__ p, const float* __restrict__ q, int64_t e,
                                       const int64_t* __restrict__ offsets, int64_t b_lo, int64_t b_hi, int64_t r0,
                                       int64_t n, double* __restrict__ acc) {
  const int64_t total = (b_hi - b_lo) * e;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = b_lo + idx / e, k = idx % e;
    const int64_t rb = std::max(block_begin(offsets, b), r0), re = std::min(block_end(offsets, b), r0 + n);
    double s = acc[b * e + k];
    for (int64_t r = rb; r < re; ++r)
      s = fma(static_cast<double>(p[(r - r0) * e + k]), static_cast<double>(q[(r - r0) * e + k]), s);
    acc[b * e + k] = s;
  }
}

__global__ void gram_finish_kernel(const double* __restrict__ acc, int64_t count, double scale,
                                   float* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<float>(scale * acc[i]);
}

}  // namespace detail

void gram_sketch(const float* rows, int64_t n_rows, int64_t dim, const int64_t* offsets_host,
                 const int64_t* offsets_dev, int64_t n_blocks, int64_t out_dim, uint64_t seed, float* out,
                 void* stream) {
  using namespace detail;
  const int64_t d = dim, e = out_dim;
  require(e > 0, "gram_sketch: out_dim must be > 0, got " + std::to_string(e));
  require(d > 0 && n_rows >= 0, "gram_sketch: rows must be (n_rows, dim) with dim > 0");
  require((offsets_host == nullptr) == (offsets_dev == nullptr),
          "gram_sketch: offsets_host and offsets_dev must both be given or both be null");
  require(offsets_host != nullptr || n_blocks == n_rows,
          "gram_sketch: without offsets there must be one block per row");
  if (n_blocks <= 0) return;
  DeviceGuard guard(out);
  cudaStream_t s = as_stream(stream);
  Scratch<float> u(d * e, s), v(d * e, s);
  const unsigned gen_grid = grid_for(d * ((e + 3) / 4), 256);
  gaussian_tile_kernel<float><<<gen_grid, 256, 0, s>>>(seed ^ kGramSeedU, 0, d, e, u.get(), e);
  gaussian_tile_kernel<float><<<gen_grid, 256, 0, s>>>(seed ^ kGramSeedV, 0, d, e, v.get(), e);
  NTKAL_CUDA_LAUNCHED("gaussian_tile_kernel");
  Scratch<double> acc(n_blocks * e, s);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(acc.get(), 0, sizeof(double) * n_blocks * e, s));
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 22) / std::max(d, e));
  const int64_t buf_rows = std::min(chunk, std::max<int64_t>(n_rows, 1));
  Scratch<float> p(buf_rows * e, s), q(buf_rows * e, s);
  // block owning row r (host copy of the offsets)
  auto block_of = [&](int64_t r) -> int64_t {
    if (!offsets_host) return r;
    return static_cast<int64_t>(std::upper_bound(offsets_host, offsets_host + n_blocks + 1, r) - offsets_host) - 1;
  };
  for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
    const int64_t n = std::min(chunk, n_rows - r0);
    gemm<float, float, float, false>(rows + r0 * d, d, u.get(), e, p.get(), e, n, e, d, 1.0f, 0.0f, s);
    gemm<float, float, float, false>(rows + r0 * d, d, v.get(), e, q.get(), e, n, e, d, 1.0f, 0.0f, s);
    const int64_t b_lo = block_of(r0), b_hi = block_of(r0 + n - 1) + 1;
    gram_accumulate_kernel<<<grid_for((b_hi - b_lo) * e, 256), 256, 0, s>>>(p.get(), q.get(), e, offsets_dev, b_lo,
                                                                            b_hi, r0, n, acc.get());
    NTKAL_CUDA_LAUNCHED("gram_accumulate_kernel");
  }
  gram_finish_kernel<<<grid_for(n_blocks * e, 256), 256, 0, s>>>(acc.get(), n_blocks * e,
                                                                 std::sqrt(static_cast<double>(e)), out);
  NTKAL_CUDA_LAUNCHED("gram_finish_kernel");
}

}  // namespace ntkal::cuda
