// Greedy posterior-variance selection on the GPU, lazy like the CPU's (cpp/greedy_pv.cpp): same picks
// (plain greedy in float64, ties -> lower index), and only the blocks that could still be picked are
// ever looked at again. With whitened rows psi = M phi (M = sqrt(c) L^{-1}) the posterior covariance
// is noise_var * psi_a^T C psi_b, C = I - V^T V over the rows of V added so far. Each pick b (m rows):
//   CPsi = Psi_B - (Psi_B V^T) V,  R R^T = I_m + Psi_B CPsi^T,  V_B = R^{-1} CPsi (appended to V),
//   U_B = V_B M (appended to U: the same projections taken from the float32 rows, u_j . phi = v_j . psi).
// Setup: every block's initial PV (fused float64 whitening + norms, no whitened row stored), then the
// blocks sorted by it. The pick loop (greedy_slots.cuh) keeps per-slot values of the activated prefix
// of that order, refreshed only when they could rank first. Device memory is O(n_blocks + picks x d):
// no Psi of the pool. One host synchronisation per pick (the next update's sizes depend on it).
#include <algorithm>
#include <string>
#include <vector>

#include "block_sums.cuh"
#include "common.cuh"
#include "gemm_simt.cuh"
#include "greedy_slots.cuh"

namespace ntkal::cuda {
namespace detail {

constexpr int64_t kFirstActivation = 4096;  // blocks activated first; later batches double the active set

// base[b] = sum of the block's row norms in row order (one thread per block); bound[b] = noise_var * base[b].
__global__ void block_base_kernel(const double* __restrict__ row_norm, const int64_t* __restrict__ offsets,
                                  int64_t n_blocks, double noise_var, double* __restrict__ base,
                                  double* __restrict__ bound) {
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < n_blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t r = block_begin(offsets, b); r < block_end(offsets, b); ++r) s += row_norm[r];
    base[b] = s;
    bound[b] = noise_var * s;
  }
}

__global__ void set_int64_kernel(int64_t* __restrict__ p, int64_t value) { *p = value; }

// Single CTA: g += I, then left-looking Cholesky of the lower triangle of g (m x m, in place).
// failed <- 1 when a pivot is not positive (cannot happen in exact arithmetic: g = I + PSD).
__global__ void small_cholesky_kernel(double* __restrict__ g, int64_t m, int* __restrict__ failed) {
  __shared__ double s_diag;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) g[i * m + i] += 1.0;
  __syncthreads();
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

struct Problem {
  const float* rows;
  int64_t n_rows, d;
  const int64_t* offsets_host;  // nullptr: one row per block
  const int64_t* offsets_dev;
  int64_t n_blocks;
  const double* whiten;  // M, d x d
  double noise_var;
  int64_t begin(int64_t b) const { return offsets_host ? offsets_host[b] : b; }
  int64_t size(int64_t b) const { return offsets_host ? offsets_host[b + 1] - offsets_host[b] : int64_t(1); }
};

// The lazy selection's device memory and host bookkeeping.
class LazyGreedy {
 public:
  LazyGreedy(const Problem& p, int64_t n, int64_t* out_indices, double* out_scores, cudaStream_t s);
  void run(int64_t n);

 private:
  void initial_bounds();
  PickResult try_pick(int64_t step);
  void activate_more();
  void condition_on(int64_t b);  // V, U += the rows of block b

  const Problem p_;
  cudaStream_t s_;
  SlotState st_{};
  Scratch<double> base_, sorted_bound_, value_, projected_;
  Scratch<int64_t> order_, pick_cols_;
  Scratch<int> stamp_, failed_;
  Scratch<unsigned char> selected_;
  Scratch<Candidate> part_any_, part_fresh_, best_;
  Scratch<unsigned int> counter_;
  Scratch<PickResult> result_;
  Scratch<double> v_, u_, psi_, cpsi_, coef_, gram_;
  int64_t active_ = 0, t_ = 0;  // active slots; rows of V and U
  int now_ = 0;                 // picks that added rows to V
};

LazyGreedy::LazyGreedy(const Problem& p, int64_t n, int64_t* out_indices, double* out_scores, cudaStream_t s)
    : p_(p), s_(s) {
  const int64_t nb = p.n_blocks, max_ctas = std::max<int64_t>(1, ceil_div(nb, kSlotThreads));
  int64_t max_m = 0;
  for (int64_t b = 0; b < nb; ++b) max_m = std::max(max_m, p.size(b));
  base_.reset(nb, s);
  sorted_bound_.reset(nb, s);
  order_.reset(nb, s);
  value_.reset(nb, s);
  projected_.reset(nb, s);
  stamp_.reset(nb, s);
  selected_.reset(nb, s);
  part_any_.reset(max_ctas, s);
  part_fresh_.reset(max_ctas, s);
  best_.reset(1, s);
  counter_.reset(1, s);
  result_.reset(1, s);
  failed_.reset(1, s);
  pick_cols_.reset(n + 1, s);
  psi_.reset(std::max<int64_t>(1, max_m * p.d), s);
  cpsi_.reset(std::max<int64_t>(1, max_m * p.d), s);
  gram_.reset(std::max<int64_t>(1, max_m * max_m), s);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(counter_.get(), 0, sizeof(unsigned int), s));
  NTKAL_CUDA_CHECK(cudaMemsetAsync(failed_.get(), 0, sizeof(int), s));
  NTKAL_CUDA_CHECK(cudaMemsetAsync(pick_cols_.get(), 0, sizeof(int64_t), s));
  st_ = SlotState{p.rows, p.d, p.offsets_dev, order_.get(), sorted_bound_.get(), base_.get(), p.noise_var,
                  value_.get(), projected_.get(), stamp_.get(), selected_.get(), nullptr, pick_cols_.get(),
                  part_any_.get(), part_fresh_.get(), best_.get(), counter_.get(), result_.get(), out_indices,
                  out_scores};
}

// base and bound of every block (fused float64 whitening + row norms), then the slot order.
void LazyGreedy::initial_bounds() {
  Scratch<double> row_norm(p_.n_rows, s_), bound(p_.n_blocks, s_);
  if (p_.n_rows > 0) {
    // one "block" per row, alpha 1: row_norm[r] = ||M phi_r||^2
    BlockSums per_row{nullptr, p_.n_rows, p_.n_rows, 1.0, false, false, row_norm.get(), nullptr, nullptr};
    rownorm_blocks_simt<float, double, double>(p_.rows, p_.d, p_.whiten, p_.d, p_.n_rows, p_.d, p_.d, true, per_row,
                                               s_);
  }
  block_base_kernel<<<grid_for(p_.n_blocks, 256), 256, 0, s_>>>(row_norm.get(), p_.offsets_dev, p_.n_blocks,
                                                                 p_.noise_var, base_.get(), bound.get());
  NTKAL_CUDA_LAUNCHED("block_base_kernel");
  // stable descending sort: equal bounds keep the lower block first
  top_k(bound.get(), nullptr, p_.n_blocks, 0, p_.n_blocks, sorted_bound_.get(), order_.get(), s_);
}

PickResult LazyGreedy::try_pick(int64_t step) {
  PickResult r{0.0, -1, -1, 0};
  if (active_ == 0) return r;
  const unsigned grid = static_cast<unsigned>(ceil_div(active_, kSlotThreads));
  pick_stage1_kernel<<<grid, kSlotThreads, 0, s_>>>(st_, active_, now_);
  NTKAL_CUDA_LAUNCHED("pick_stage1_kernel");
  pick_stage2_kernel<<<grid, kSlotThreads, 0, s_>>>(st_, active_, p_.n_blocks, now_, step);
  NTKAL_CUDA_LAUNCHED("pick_stage2_kernel");
  NTKAL_CUDA_CHECK(cudaMemcpyAsync(&r, result_.get(), sizeof(PickResult), cudaMemcpyDeviceToHost, s_));
  NTKAL_CUDA_CHECK(cudaStreamSynchronize(s_));
  return r;
}

void LazyGreedy::activate_more() {
  if (active_ == p_.n_blocks) throw CudaError("select(greedy_pv): no pick with every block active (internal error)");
  const int64_t next = std::min(p_.n_blocks, active_ + std::max(kFirstActivation, active_));
  activate_slots_kernel<<<grid_for(next - active_, 256), 256, 0, s_>>>(st_, active_, next);
  NTKAL_CUDA_LAUNCHED("activate_slots_kernel");
  active_ = next;
}

void LazyGreedy::condition_on(int64_t b) {
  const int64_t m = p_.size(b), d = p_.d, t = t_;
  const float* phi = p_.rows + p_.begin(b) * d;
  // Psi_B = Phi_B M^T, then CPsi = Psi_B - (Psi_B V^T) V
  gemm<float, double, double, true>(phi, d, p_.whiten, d, psi_.get(), d, m, d, d, 1.0, 0.0, s_);
  NTKAL_CUDA_CHECK(cudaMemcpyAsync(cpsi_.get(), psi_.get(), sizeof(double) * m * d, cudaMemcpyDeviceToDevice, s_));
  if (t > 0) {
    coef_.grow(m * t, 0, s_);
    gemm<double, double, double, true>(psi_.get(), d, v_.get(), d, coef_.get(), t, m, t, d, 1.0, 0.0, s_);
    gemm<double, double, double, false>(coef_.get(), t, v_.get(), d, cpsi_.get(), d, m, d, t, -1.0, 1.0, s_);
  }
  // R R^T = I + Psi_B CPsi^T
  gemm<double, double, double, true>(psi_.get(), d, cpsi_.get(), d, gram_.get(), m, m, m, d, 1.0, 0.0, s_);
  small_cholesky_kernel<<<1, 256, 0, s_>>>(gram_.get(), m, failed_.get());
  NTKAL_CUDA_LAUNCHED("small_cholesky_kernel");
  // V_B = R^{-1} CPsi and U_B = V_B M, appended
  const int64_t capacity = std::max<int64_t>((t + m) * d, 2 * t * d);
  v_.grow(capacity, t * d, s_);
  u_.grow(capacity, t * d, s_);
  st_.u = u_.get();
  double* vb = v_.get() + t * d;
  forward_subst_kernel<<<static_cast<unsigned>(ceil_div(d, 128)), 128, 0, s_>>>(gram_.get(), m, cpsi_.get(), d, vb);
  NTKAL_CUDA_LAUNCHED("forward_subst_kernel");
  gemm<double, double, double, false>(vb, d, p_.whiten, d, u_.get() + t * d, d, m, d, d, 1.0, 0.0, s_);
  t_ = t + m;
  ++now_;
  set_int64_kernel<<<1, 1, 0, s_>>>(pick_cols_.get() + now_, t_);
  NTKAL_CUDA_LAUNCHED("set_int64_kernel");
}

void LazyGreedy::run(int64_t n) {
  initial_bounds();
  for (int64_t step = 0; step < n;) {
    const PickResult r = try_pick(step);
    if (!r.ok) {
      activate_more();
      continue;
    }
    ++step;  // recorded on the device
    if (r.block < 0 || r.block >= p_.n_blocks) throw CudaError("select(greedy_pv): invalid pick (internal error)");
    if (step < n && p_.size(r.block) > 0) condition_on(r.block);
  }
  int failed = 0;
  NTKAL_CUDA_CHECK(cudaMemcpyAsync(&failed, failed_.get(), sizeof(int), cudaMemcpyDeviceToHost, s_));
  NTKAL_CUDA_CHECK(cudaStreamSynchronize(s_));
  if (failed) throw NumericalError("select(greedy_pv): block update lost positive definiteness");
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
  require(n_blocks < (int64_t(1) << 31), "select: at most 2^31 - 1 blocks on the GPU");
  if (n == 0) return;
  DeviceGuard guard(out_indices);
  const Problem p{rows, n_rows, dim, offsets_host, offsets_dev, n_blocks, whiten, noise_var};
  LazyGreedy greedy(p, n, out_indices, out_scores, as_stream(stream));
  greedy.run(n);
}

}  // namespace ntkal::cuda
