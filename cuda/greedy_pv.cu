// Greedy posterior-variance selection on the GPU, all in float64 (same picks as the CPU's lazy
// float64 greedy, cpp/greedy_pv.cpp). With whitened rows psi = M phi (M = sqrt(c) L^{-1}) the
// posterior covariance is noise_var * psi_a^T C psi_b, C = I - V^T V over the rows of V added so far.
// Each pick b (m rows Psi_B):
//   CPsi = Psi_B - (Psi_B V^T) V,  R R^T = I_m + Psi_B CPsi^T,  V_B = R^{-1} CPsi  (m x d, appended to V)
//   PV_c -= noise_var * sum_{r in c} ||V_B psi_r||^2   for every candidate c (fused GEMM + block sums).
// Unlike the CPU (lazy heap over a few refreshed blocks), every candidate is updated at every pick:
// that is one (M x d x m) GEMM, which the GPU does faster than it could chase a heap.
#include <algorithm>
#include <string>
#include <vector>

#include "block_sums.cuh"
#include "common.cuh"
#include "gemm_simt.cuh"

namespace ntkal::cuda {
namespace detail {

// One warp per block: pv[b] = alpha * sum of squares of the block's rows (contiguous in psi).
__global__ void block_sqnorm_kernel(const double* __restrict__ psi, int64_t d, const int64_t* __restrict__ offsets,
                                    int64_t n_blocks, double alpha, double* __restrict__ pv) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); b < n_blocks;
       b += warps) {
    const int64_t e0 = block_begin(offsets, b) * d, e1 = block_end(offsets, b) * d;
    double s = 0.0;
    for (int64_t e = e0 + lane; e < e1; e += 32) s = fma(psi[e], psi[e], s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) pv[b] = alpha * s;
  }
}

// Single CTA: the best unselected block (largest pv, lowest index); records and marks it.
__global__ void greedy_pick_kernel(const double* __restrict__ pv, unsigned char* __restrict__ selected,
                                   int64_t n_blocks, int64_t step, int64_t* __restrict__ picks,
                                   double* __restrict__ scores) {
  double best = -INFINITY;
  int64_t arg = -1;
  for (int64_t i = threadIdx.x; i < n_blocks; i += blockDim.x)
    if (!selected[i] && ranks_before(pv[i], i, best, arg)) {
      best = pv[i];
      arg = i;
    }
  block_argmax(best, arg);
  if (threadIdx.x == 0) {
    picks[step] = arg;
    scores[step] = best;
    if (arg >= 0) selected[arg] = 1;
  }
}

__global__ void add_identity_kernel(double* __restrict__ g, int64_t m) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    g[i * m + i] += 1.0;
}

// Single CTA, left-looking Cholesky of the lower triangle of g (m x m, in place). failed <- 1 when a
// pivot is not positive (cannot happen in exact arithmetic: g = I + PSD).
__global__ void small_cholesky_kernel(double* __restrict__ g, int64_t m, int* __restrict__ failed) {
  __shared__ double s_diag;
  for (int64_t j = 0; j < m; ++j) {
    double part = 0.0;
    for (int64_t k = threadIdx.x; k < j; k += blockDim.x) part = fma(g[j * m + k], g[j * m + k], part);
    const double ss = block_sum(part);
    if (threadIdx.x == 0) {
      double v = g[j * m + j] - ss;
      if (!(v > 0.0)) {
        *failed = 1;
        v = 1.0;
      }
      s_diag = sqrt(v);
      g[j * m + j] = s_diag;
    }
    __syncthreads();
    const double diag = s_diag;
    for (int64_t i = j + 1 + threadIdx.x; i < m; i += blockDim.x) {
      double v = g[i * m + j];
      for (int64_t k = 0; k < j; ++k) v = fma(-g[i * m + k], g[j * m + k], v);
      g[i * m + j] = v / diag;
    }
    __syncthreads();
  }
}

// V_B = R^{-1} CPsi by forward substitution; one thread per column of d (columns are independent).
__global__ void forward_subst_kernel(const double* __restrict__ r, int64_t m, const double* __restrict__ cpsi,
                                     int64_t d, double* __restrict__ vb) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= d) return;
  for (int64_t i = 0; i < m; ++i) {
    double v = cpsi[i * d + c];
    for (int64_t j = 0; j < i; ++j) v = fma(-r[i * m + j], vb[j * d + c], v);
    vb[i * d + c] = v / r[i * m + i];
  }
}

}  // namespace detail

void select_greedy_pv(const float* rows, int64_t n_rows, int64_t dim, const int64_t* offsets_host,
                      const int64_t* offsets_dev, int64_t n_blocks, const double* whiten, double noise_var, int64_t n,
                      int64_t* out_indices, double* out_scores, void* stream) {
  using namespace detail;
  require(dim > 0 && n_rows >= 0, "select: rows must be (n_rows, dim) with dim > 0");
  require((offsets_host == nullptr) == (offsets_dev == nullptr),
          "select: offsets_host and offsets_dev must both be given or both be null");
  require(offsets_host != nullptr || n_blocks == n_rows, "select: without offsets there must be one block per row");
  require(n >= 0 && n <= n_blocks,
          "select: n must be in [0, " + std::to_string(n_blocks) + "], got " + std::to_string(n));
  require(noise_var > 0.0, "select: noise_var must be > 0");
  if (n == 0) return;
  DeviceGuard guard(out_indices);
  cudaStream_t s = as_stream(stream);
  const int64_t d = dim;
  auto begin = [&](int64_t b) { return offsets_host ? offsets_host[b] : b; };
  auto size = [&](int64_t b) { return offsets_host ? offsets_host[b + 1] - offsets_host[b] : int64_t(1); };

  // Psi = Phi M^T (float64), every candidate's PV, the selection mask.
  Scratch<double> psi(n_rows * d, s), pv(n_blocks, s);
  Scratch<unsigned char> selected(n_blocks, s);
  gemm<float, double, double, true>(rows, d, whiten, d, psi.get(), d, n_rows, d, d, 1.0, 0.0, s);
  block_sqnorm_kernel<<<grid_for(n_blocks, 8, 65535), 256, 0, s>>>(psi.get(), d, offsets_dev, n_blocks, noise_var,
                                                                    pv.get());
  NTKAL_CUDA_LAUNCHED("block_sqnorm_kernel");
  NTKAL_CUDA_CHECK(cudaMemsetAsync(selected.get(), 0, n_blocks, s));
  Scratch<int> failed(1, s);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(failed.get(), 0, sizeof(int), s));

  int64_t max_m = 0;
  for (int64_t b = 0; b < n_blocks; ++b) max_m = std::max(max_m, size(b));
  Scratch<double> v;                      // V: t x d rows, grown as blocks are selected
  Scratch<double> coef;                   // Psi_B V^T: m x t, grown with t
  Scratch<double> cpsi(max_m * d, s), gram(max_m * max_m, s);
  int64_t t = 0;
  for (int64_t step = 0; step < n; ++step) {
    greedy_pick_kernel<<<1, 1024, 0, s>>>(pv.get(), selected.get(), n_blocks, step, out_indices, out_scores);
    NTKAL_CUDA_LAUNCHED("greedy_pick_kernel");
    if (step + 1 == n) break;
    int64_t b = -1;
    NTKAL_CUDA_CHECK(cudaMemcpyAsync(&b, out_indices + step, sizeof(int64_t), cudaMemcpyDeviceToHost, s));
    NTKAL_CUDA_CHECK(cudaStreamSynchronize(s));
    if (b < 0) throw CudaError("select(greedy_pv): no unselected block left (internal error)");
    const int64_t m = size(b);
    if (m == 0) continue;
    const double* psi_b = psi.get() + begin(b) * d;
    // CPsi = Psi_B - (Psi_B V^T) V
    NTKAL_CUDA_CHECK(cudaMemcpyAsync(cpsi.get(), psi_b, sizeof(double) * m * d, cudaMemcpyDeviceToDevice, s));
    if (t > 0) {
      coef.grow(m * t, 0, s);
      gemm<double, double, double, true>(psi_b, d, v.get(), d, coef.get(), t, m, t, d, 1.0, 0.0, s);
      gemm<double, double, double, false>(coef.get(), t, v.get(), d, cpsi.get(), d, m, d, t, -1.0, 1.0, s);
    }
    // R R^T = I + Psi_B CPsi^T
    gemm<double, double, double, true>(psi_b, d, cpsi.get(), d, gram.get(), m, m, m, d, 1.0, 0.0, s);
    add_identity_kernel<<<grid_for(m, 256), 256, 0, s>>>(gram.get(), m);
    NTKAL_CUDA_LAUNCHED("add_identity_kernel");
    small_cholesky_kernel<<<1, 256, 0, s>>>(gram.get(), m, failed.get());
    NTKAL_CUDA_LAUNCHED("small_cholesky_kernel");
    // V_B = R^{-1} CPsi, appended to V
    v.grow(std::max<int64_t>((t + m) * d, 2 * t * d), t * d, s);
    double* vb = v.get() + t * d;
    forward_subst_kernel<<<static_cast<unsigned>(ceil_div(d, 128)), 128, 0, s>>>(gram.get(), m, cpsi.get(), d, vb);
    NTKAL_CUDA_LAUNCHED("forward_subst_kernel");
    // PV_c -= noise_var * sum_{r in c} ||V_B psi_r||^2
    BlockSums sums{offsets_dev, n_blocks, n_rows, noise_var, false, true, pv.get(), nullptr, nullptr};
    rownorm_blocks_simt<double, double, double>(psi.get(), d, vb, d, n_rows, m, d, false, sums, s);
    t += m;
  }
  int failed_host = 0;
  NTKAL_CUDA_CHECK(cudaMemcpyAsync(&failed_host, failed.get(), sizeof(int), cudaMemcpyDeviceToHost, s));
  NTKAL_CUDA_CHECK(cudaStreamSynchronize(s));
  if (failed_host) throw NumericalError("select(greedy_pv): block update lost positive definiteness");
}

}  // namespace ntkal::cuda
