// LCMD and MaxDist selection on the GPU, mirroring cpp/centres.cpp:
// * train centres (cpp/nearest_centre.cpp): a blocked GEMM over all train vectors, both sides
//   centred on the train mean, of ||t||^2 - 2 x.t per candidate (never one pass per training point)
//   only shortlists: every train vector within the CPU's rounding tolerance of the running best is
//   measured exactly in float64 (the CPU's summation order), and the exact argmin wins (ties: lowest
//   train index). The winner is therefore the exact nearest train vector, as on the CPU.
// * cold start (no train): the largest norm is the first pick, its cluster holds everyone.
// * each step: cluster sums of squared distances, pick (lcmd: farthest unselected member of the
//   cluster(s) with the largest sum, falling back to the farthest unselected overall; maxdist: the
//   farthest unselected), then the new centre's exact float64 distances to every candidate.
// The picks never leave the device: every kernel reads the current pick from device memory, so the
// whole selection is queued without a host round trip. Cluster sums use float64 atomics: their
// summation order can differ from the CPU's in the last bit, which matters only for exact ties.
#include <string>
#include <type_traits>

#include "common.cuh"
#include "gemm_simt.cuh"

namespace ntkal::cuda {
namespace detail {

// One warp per row: float64 sum of squares / of squared differences.
__global__ void row_sqnorm_kernel(const float* __restrict__ x, int64_t n, int64_t e, double* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); i < n; i += warps) {
    double s = 0.0;
    for (int64_t k = lane; k < e; k += 32) {
      const double v = x[i * e + k];
      s = fma(v, v, s);
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[i] = s;
  }
}

__device__ __forceinline__ double warp_sqdist(const float* __restrict__ a, const float* __restrict__ b, int64_t e) {
  const int lane = threadIdx.x & 31;
  double s = 0.0;
  for (int64_t k = lane; k < e; k += 32) {
    const double diff = static_cast<double>(a[k]) - static_cast<double>(b[k]);
    s = fma(diff, diff, s);
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// Squared distance summed in the CPU's order (eight partial sums, k mod 8, combined pairwise) with
// no fused multiply-add (nvcc would contract s += d * d), so it equals cpp/nearest_centre.cpp sqdist
// bit for bit.
__device__ __forceinline__ double exact_sqdist(const float* __restrict__ a, const float* __restrict__ b,
                                               int64_t e) {
  double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t k = 0; k < e; ++k) {
    const double diff = __dsub_rn(static_cast<double>(a[k]), static_cast<double>(b[k]));
    s[k & 7] = __dadd_rn(s[k & 7], __dmul_rn(diff, diff));
  }
  return __dadd_rn(__dadd_rn(__dadd_rn(s[0], s[1]), __dadd_rn(s[2], s[3])),
                   __dadd_rn(__dadd_rn(s[4], s[5]), __dadd_rn(s[6], s[7])));
}

// mean[k] = column mean of the train vectors, summed in row order like the CPU; one thread per column.
__global__ void train_mean_kernel(const float* __restrict__ tr, int64_t n_train, int64_t e,
                                  double* __restrict__ mean) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= e) return;
  double s = 0.0;
  for (int64_t j = 0; j < n_train; ++j) s = __dadd_rn(s, static_cast<double>(tr[j * e + k]));
  mean[k] = s / static_cast<double>(n_train);
}

// out[i] = ||T(v_i - mean)||^2 in float64; one warp per row.
template <class T>
__global__ void centred_sqnorm_kernel(const float* __restrict__ v, int64_t n, int64_t e,
                                      const double* __restrict__ mean, double* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); i < n; i += warps) {
    double s = 0.0;
    for (int64_t k = lane; k < e; k += 32) {
      const double c = static_cast<double>(static_cast<T>(static_cast<double>(v[i * e + k]) - mean[k]));
      s = fma(c, c, s);
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[i] = s;
  }
}

// Single CTA: *out = max of v (n >= 1 values >= 0).
__global__ void max_kernel(const double* __restrict__ v, int64_t n, double* __restrict__ out) {
  double m = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmax(m, v[i]);
  for (int o = 16; o > 0; o >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, o));
  __shared__ double s[32];
  if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) m = fmax(m, s[w]);
    *out = m;
  }
}

// tol[i] = the CPU's rounding bound of the GEMM form for candidate i (nearest_centre.cpp).
__global__ void shortlist_tolerance_kernel(double* __restrict__ xn_tol, int64_t n, int64_t e, double eps,
                                           const double* __restrict__ tmax) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    xn_tol[i] = 8.0 * static_cast<double>(e + 2) * eps * (xn_tol[i] + *tmax) + 1e-300;
}

// Nearest train vector: a CTA owns BM candidates and loops over all train tiles. Each thread keeps,
// per row, the running best of the GEMM form (shared by the 16 threads of the row after every tile)
// and the exact winner among the train vectors that came within tol of it. The exact nearest
// vector j* always qualifies (its GEMM value is within tol of the minimum), so it wins.
template <class T>
__global__ void __launch_bounds__(kSimtThreads)
    nearest_train_kernel(const float* __restrict__ x, int64_t n_pool, const float* __restrict__ tr, int64_t n_train,
                         int64_t e, const double* __restrict__ mean, const double* __restrict__ tnorm,
                         const double* __restrict__ tol, int64_t* __restrict__ owner, double* __restrict__ min_d2) {
  using C = Simt<T>;
  __shared__ SimtShared<T> sm;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * C::BM;
  const int tx = simt_tx(), ty = simt_ty();
  double best[C::TM], ex_d[C::TM], tol_i[C::TM];
  int64_t ex_j[C::TM];
#pragma unroll
  for (int i = 0; i < C::TM; ++i) {
    const int64_t r = r0 + simt_row<T>(ty, i);
    best[i] = INFINITY;
    ex_d[i] = INFINITY;
    ex_j[i] = -1;
    tol_i[i] = r < n_pool ? tol[r] : 0.0;
  }
  for (int64_t c0 = 0; c0 < n_train; c0 += C::BN) {
    T acc[C::TM][C::TN];
    simt_tile<float, float, T, true, true>(x, e, tr, e, n_pool, n_train, r0, c0, 0, e, sm, acc, mean);
#pragma unroll
    for (int i = 0; i < C::TM; ++i) {
      const int64_t r = r0 + simt_row<T>(ty, i);
      if (r >= n_pool) continue;
#pragma unroll
      for (int j = 0; j < C::TN; ++j) {
        const int64_t c = c0 + simt_col<T>(tx, j);
        if (c >= n_train) continue;
        const double v = tnorm[c] - 2.0 * static_cast<double>(acc[i][j]);
        if (v <= best[i] + tol_i[i]) {  // rare after the first tiles: a near-tie or a new best
          const double d = exact_sqdist(x + r * e, tr + c * e, e);
          if (d < ex_d[i] || (d == ex_d[i] && c < ex_j[i])) {
            ex_d[i] = d;
            ex_j[i] = c;
          }
          best[i] = fmin(best[i], v);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < C::TM; ++i)
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) best[i] = fmin(best[i], __shfl_xor_sync(0xffffffffu, best[i], o));
  }
#pragma unroll
  for (int i = 0; i < C::TM; ++i) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
      const double od = __shfl_xor_sync(0xffffffffu, ex_d[i], o);
      const int64_t oj = __shfl_xor_sync(0xffffffffu, ex_j[i], o);
      if (oj >= 0 && (ex_j[i] < 0 || od < ex_d[i] || (od == ex_d[i] && oj < ex_j[i]))) {
        ex_d[i] = od;
        ex_j[i] = oj;
      }
    }
    const int64_t r = r0 + simt_row<T>(ty, i);
    if (tx == 0 && r < n_pool) {
      owner[r] = ex_j[i];
      min_d2[r] = ex_d[i];
    }
  }
}

// Cold start: the largest norm (lowest index on ties) is pick 0 with its squared norm as score.
__global__ void cold_start_pick_kernel(const double* __restrict__ norms, int64_t n_pool,
                                       unsigned char* __restrict__ selected, int64_t* __restrict__ picks,
                                       double* __restrict__ scores) {
  double best = -INFINITY;
  int64_t arg = -1;
  for (int64_t i = threadIdx.x; i < n_pool; i += blockDim.x)
    if (ranks_before(norms[i], i, best, arg)) {
      best = norms[i];
      arg = i;
    }
  block_argmax(best, arg);
  if (threadIdx.x == 0) {
    picks[0] = arg;
    scores[0] = best;
    selected[arg] = 1;
  }
}

// New centre picks[step] (cluster id `cluster`): candidates strictly closer move to it.
// The pick itself (distance 0) moves unless it already sat at distance 0 (CPU: strict <).
// first: the cold-start centre, which every candidate joins.
__global__ void add_centre_kernel(const float* __restrict__ x, int64_t n_pool, int64_t e,
                                  const int64_t* __restrict__ picks, int64_t step, int64_t cluster, bool first,
                                  double* __restrict__ min_d2, int64_t* __restrict__ owner) {
  const int64_t s = picks[step];
  const float* xs = x + s * e;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); i < n_pool;
       i += warps) {
    const double d2 = warp_sqdist(xs, x + i * e, e);
    if ((threadIdx.x & 31) == 0 && (first || d2 < min_d2[i])) {
      min_d2[i] = d2;
      owner[i] = cluster;
    }
  }
}

// sums[c] += min_d2[i] over candidates i owned by c. Lanes of a warp with the same owner are added
// up first (in lane order) and one lane issues the atomic: early on, most candidates share a few
// clusters, and one atomic per candidate on the same address would serialise. blockDim.x == 256.
__global__ void __launch_bounds__(256) cluster_sum_kernel(const double* __restrict__ min_d2,
                                                          const int64_t* __restrict__ owner, int64_t n_pool,
                                                          double* __restrict__ sums) {
  __shared__ double s_val[256];
  const int lane = threadIdx.x & 31, warp_base = threadIdx.x & ~31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // every lane runs the same number of iterations, so full-warp intrinsics are safe
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < n_pool; base += stride) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < n_pool;
    const unsigned long long key = valid ? static_cast<unsigned long long>(owner[i]) : ~0ull;
    s_val[threadIdx.x] = valid ? min_d2[i] : 0.0;
    __syncwarp();
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    if (valid && lane == __ffs(peers) - 1) {
      double total = 0.0;
      for (unsigned m = peers; m; m &= m - 1) total += s_val[warp_base + __ffs(m) - 1];
      atomicAdd(&sums[key], total);
    }
    __syncwarp();
  }
}

// Single CTA. lcmd (sums != nullptr): unselected candidates whose cluster has the largest sum rank
// first, then by distance (larger first) and index (lower first); without any such candidate the
// farthest unselected overall wins -- the CPU's fallback. maxdist (sums == nullptr): distance, index.
__global__ void distance_pick_kernel(const double* __restrict__ min_d2, const int64_t* __restrict__ owner,
                                     int64_t n_pool, const double* __restrict__ sums, int64_t n_clusters,
                                     unsigned char* __restrict__ selected, int64_t step, int64_t* __restrict__ picks,
                                     double* __restrict__ scores) {
  __shared__ double s_best_sum;
  __shared__ double s_v[32];
  __shared__ int64_t s_i[32];
  __shared__ int s_tier[32];
  if (sums) {
    double m = -1.0;  // CPU: best_sum starts at -1, so clusters with sum 0 qualify
    for (int64_t c = threadIdx.x; c < n_clusters; c += blockDim.x) m = fmax(m, sums[c]);
    for (int o = 16; o > 0; o >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) s_v[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      double t = -1.0;
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t = fmax(t, s_v[w]);
      s_best_sum = t;
    }
    __syncthreads();
  }
  const double best_sum = sums ? s_best_sum : 0.0;
  // (tier, value, index): higher tier first, then ranks_before on (value, index)
  int tier = -1;
  double v = -INFINITY;
  int64_t arg = -1;
  auto better = [](int ta, double va, int64_t ia, int tb, double vb, int64_t ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    if (ta != tb) return ta > tb;
    return ranks_before(va, ia, vb, ib);
  };
  for (int64_t i = threadIdx.x; i < n_pool; i += blockDim.x) {
    if (selected[i]) continue;
    const int ti = sums ? (sums[owner[i]] == best_sum ? 1 : 0) : 0;
    if (better(ti, min_d2[i], i, tier, v, arg)) {
      tier = ti;
      v = min_d2[i];
      arg = i;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const int ot = __shfl_xor_sync(0xffffffffu, tier, o);
    const double ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, arg, o);
    if (better(ot, ov, oi, tier, v, arg)) {
      tier = ot;
      v = ov;
      arg = oi;
    }
  }
  __syncthreads();  // s_v reuse
  if ((threadIdx.x & 31) == 0) {
    s_tier[threadIdx.x >> 5] = tier;
    s_v[threadIdx.x >> 5] = v;
    s_i[threadIdx.x >> 5] = arg;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w)
      if (better(s_tier[w], s_v[w], s_i[w], tier, v, arg)) {
        tier = s_tier[w];
        v = s_v[w];
        arg = s_i[w];
      }
    picks[step] = arg;
    scores[step] = v;
    if (arg >= 0) selected[arg] = 1;
  }
}

// owner / min_d2 of every candidate: the exact nearest train vector and its float64 distance.
template <class T>
void nearest_train(const float* x, int64_t n_pool, const float* train, int64_t n_train, int64_t e, int64_t* owner,
                   double* min_d2, cudaStream_t s) {
  Scratch<double> mean(e, s), tnorm(n_train, s), tol(n_pool, s), tmax(1, s);
  train_mean_kernel<<<static_cast<unsigned>(ceil_div(e, 128)), 128, 0, s>>>(train, n_train, e, mean.get());
  NTKAL_CUDA_LAUNCHED("train_mean_kernel");
  centred_sqnorm_kernel<T><<<grid_for(n_train, 8, 65535), 256, 0, s>>>(train, n_train, e, mean.get(), tnorm.get());
  centred_sqnorm_kernel<T><<<grid_for(n_pool, 8, 65535), 256, 0, s>>>(x, n_pool, e, mean.get(), tol.get());
  NTKAL_CUDA_LAUNCHED("centred_sqnorm_kernel");
  max_kernel<<<1, 1024, 0, s>>>(tnorm.get(), n_train, tmax.get());
  NTKAL_CUDA_LAUNCHED("max_kernel");
  const double eps = std::is_same_v<T, float> ? 5.96e-8 : 1.12e-16;  // as in nearest_centre.cpp
  shortlist_tolerance_kernel<<<grid_for(n_pool, 256), 256, 0, s>>>(tol.get(), n_pool, e, eps, tmax.get());
  NTKAL_CUDA_LAUNCHED("shortlist_tolerance_kernel");
  nearest_train_kernel<T><<<static_cast<unsigned>(ceil_div(n_pool, Simt<T>::BM)), kSimtThreads, 0, s>>>(
      x, n_pool, train, n_train, e, mean.get(), tnorm.get(), tol.get(), owner, min_d2);
  NTKAL_CUDA_LAUNCHED("nearest_train_kernel");
}

}  // namespace detail

void select_by_distance(DistanceMethod method, const float* x, int64_t n_pool, const float* train, int64_t n_train,
                        int64_t e, int64_t n, Precision init, int64_t* out_indices, double* out_scores,
                        void* stream) {
  using namespace detail;
  require(e > 0 && n_pool >= 0 && n_train >= 0, "select: vectors must be (n, e) with e > 0");
  require(n >= 0 && n <= n_pool, "select: n must be in [0, " + std::to_string(n_pool) + "], got " + std::to_string(n));
  require(n_train == 0 || train != nullptr, "select: train vectors missing");
  if (n == 0) return;
  DeviceGuard guard(x);
  cudaStream_t s = as_stream(stream);
  const bool lcmd = method == DistanceMethod::Lcmd;
  Scratch<double> min_d2(n_pool, s), sums(lcmd ? n_train + n + 1 : 0, s);
  Scratch<int64_t> owner(n_pool, s);
  Scratch<unsigned char> selected(n_pool, s);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(selected.get(), 0, n_pool, s));
  const unsigned warp_grid = grid_for(n_pool, 8, 65535);  // 8 warps (rows) per 256-thread CTA
  int64_t n_clusters = 0, step = 0;
  if (n_train > 0) {
    if (init == Precision::Float64)
      nearest_train<double>(x, n_pool, train, n_train, e, owner.get(), min_d2.get(), s);
    else
      nearest_train<float>(x, n_pool, train, n_train, e, owner.get(), min_d2.get(), s);
    n_clusters = n_train;
  } else {
    Scratch<double> norms(n_pool, s);
    row_sqnorm_kernel<<<warp_grid, 256, 0, s>>>(x, n_pool, e, norms.get());
    NTKAL_CUDA_LAUNCHED("row_sqnorm_kernel");
    cold_start_pick_kernel<<<1, 1024, 0, s>>>(norms.get(), n_pool, selected.get(), out_indices, out_scores);
    NTKAL_CUDA_LAUNCHED("cold_start_pick_kernel");
    add_centre_kernel<<<warp_grid, 256, 0, s>>>(x, n_pool, e, out_indices, 0, 0, true, min_d2.get(), owner.get());
    NTKAL_CUDA_LAUNCHED("add_centre_kernel");
    n_clusters = 1;
    step = 1;
  }
  for (; step < n; ++step) {
    if (lcmd) {
      NTKAL_CUDA_CHECK(cudaMemsetAsync(sums.get(), 0, sizeof(double) * n_clusters, s));
      cluster_sum_kernel<<<grid_for(n_pool, 256), 256, 0, s>>>(min_d2.get(), owner.get(), n_pool, sums.get());
      NTKAL_CUDA_LAUNCHED("cluster_sum_kernel");
    }
    distance_pick_kernel<<<1, 1024, 0, s>>>(min_d2.get(), owner.get(), n_pool, lcmd ? sums.get() : nullptr,
                                            n_clusters, selected.get(), step, out_indices, out_scores);
    NTKAL_CUDA_LAUNCHED("distance_pick_kernel");
    if (step + 1 == n) break;
    add_centre_kernel<<<warp_grid, 256, 0, s>>>(x, n_pool, e, out_indices, step, n_clusters, false, min_d2.get(),
                                                owner.get());
    NTKAL_CUDA_LAUNCHED("add_centre_kernel");
    ++n_clusters;
  }
}

}  // namespace ntkal::cuda
