// Tiled SIMT GEMM main loop (FP32 or FP64 FMA, no cuBLAS) shared by the projection, scoring,
// selection and Gram-sketch kernels. A CTA of 256 threads computes one BM x BN tile of
// A (M x K, row-major) times op(B); each thread owns a TM x TN sub-tile split in two halves per
// direction (rows h*BM/2 + ty*TM/2 + v), so shared-memory reads are 16-byte vectors without bank
// conflicts. Shared tiles are double-buffered with a register prefetch of the next K step.
//
// op(B): kTransB == false: B is K x N row-major (B[k*ldb + n]);
//        kTransB == true:  B is given as Bt, N x K row-major (Bt[n*ldb + k]) -- e.g. the whitening
//        operator M with W = Phi M^T, or V rows in greedy selection.
#pragma once
#include <cstdint>

#include "common.cuh"

namespace ntkal::cuda::detail {

template <class T>
struct Simt;
template <>
struct Simt<float> {
  static constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8, PAD = 4;
};
template <>
struct Simt<double> {
  static constexpr int BM = 64, BN = 64, BK = 8, TM = 4, TN = 4, PAD = 2;
};
constexpr int kSimtThreads = 256;

template <class T, int V>
struct VecOf;
template <>
struct VecOf<float, 4> {
  using type = float4;
};
template <>
struct VecOf<double, 2> {
  using type = double2;
};

// Loads V consecutive T from 16-byte-aligned shared memory.
template <class T, int V>
__device__ __forceinline__ void load_vec(const T* p, T (&dst)[V]) {
  using Vec = typename VecOf<T, V>::type;
  const Vec v = *reinterpret_cast<const Vec*>(p);
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < V; ++i) dst[i] = e[i];
}

// alignas(16): load_vec reads 16-byte vectors, so the tile's base must be 16-byte aligned (a plain
// float/double array only guarantees 4 / 8), and every padded row must keep that alignment.
template <class T>
struct alignas(16) SimtShared {
  using C = Simt<T>;
  static_assert((C::BM + C::PAD) * sizeof(T) % 16 == 0 && (C::BN + C::PAD) * sizeof(T) % 16 == 0,
                "padded shared rows must stay 16-byte aligned for the vector loads");
  T a[2][C::BK][C::BM + C::PAD];
  T b[2][C::BK][C::BN + C::PAD];
};

// Row / column of accumulator (i, j) of thread (ty, tx) inside the tile.
template <class T>
__device__ __forceinline__ int simt_row(int ty, int i) {
  using C = Simt<T>;
  constexpr int VM = C::TM / 2;
  return (i / VM) * (C::BM / 2) + ty * VM + (i % VM);
}
template <class T>
__device__ __forceinline__ int simt_col(int tx, int j) {
  using C = Simt<T>;
  constexpr int VN = C::TN / 2;
  return (j / VN) * (C::BN / 2) + tx * VN + (j % VN);
}
__device__ __forceinline__ int simt_tx() { return threadIdx.x % 16; }
__device__ __forceinline__ int simt_ty() { return threadIdx.x / 16; }

// acc (TM x TN per thread) = A[r0 : r0+BM, k_begin : k_end] * op(B)[k_begin : k_end, c0 : c0+BN],
// zero outside [0, M) x [0, N). All 256 threads must call it (it synchronises the CTA).
// kShift: both operands are centred on the fly, element (., k) - shift[k] in float64, then rounded
// to T (the train-mean centring of the distance initialisation; needs kTransB).
template <class TA, class TB, class T, bool kTransB, bool kShift = false>
__device__ void simt_tile(const TA* __restrict__ A, int64_t lda, const TB* __restrict__ B, int64_t ldb, int64_t M,
                          int64_t N, int64_t r0, int64_t c0, int64_t k_begin, int64_t k_end, SimtShared<T>& sm,
                          T (&acc)[Simt<T>::TM][Simt<T>::TN], const double* __restrict__ shift = nullptr) {
  static_assert(!kShift || kTransB, "centring is only implemented for k-contiguous operands");
  using C = Simt<T>;
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, TM = C::TM, TN = C::TN;
  constexpr int LA = BM * BK / kSimtThreads, LB = BN * BK / kSimtThreads;
  static_assert(LA >= 1 && LB >= 1, "tile too small for 256 threads");
  const int tid = threadIdx.x, tx = simt_tx(), ty = simt_ty();

#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  if (k_end <= k_begin) return;
  const int64_t n_k = ceil_div(k_end - k_begin, BK);

  T ra[LA], rb[LB];
  auto load = [&](int64_t kt) {
    const int64_t k0 = k_begin + kt * BK;
#pragma unroll
    for (int l = 0; l < LA; ++l) {
      const int idx = tid + l * kSimtThreads, r = idx / BK, k = idx % BK;
      const int64_t gr = r0 + r, gk = k0 + k;
      if constexpr (kShift)
        ra[l] = (gr < M && gk < k_end) ? static_cast<T>(static_cast<double>(A[gr * lda + gk]) - shift[gk]) : T(0);
      else
        ra[l] = (gr < M && gk < k_end) ? static_cast<T>(A[gr * lda + gk]) : T(0);
    }
#pragma unroll
    for (int l = 0; l < LB; ++l) {
      const int idx = tid + l * kSimtThreads;
      if constexpr (kTransB) {
        const int n = idx / BK, k = idx % BK;
        const int64_t gn = c0 + n, gk = k0 + k;
        if constexpr (kShift)
          rb[l] = (gn < N && gk < k_end) ? static_cast<T>(static_cast<double>(B[gn * ldb + gk]) - shift[gk]) : T(0);
        else
          rb[l] = (gn < N && gk < k_end) ? static_cast<T>(B[gn * ldb + gk]) : T(0);
      } else {
        const int k = idx / BN, n = idx % BN;
        const int64_t gn = c0 + n, gk = k0 + k;
        rb[l] = (gn < N && gk < k_end) ? static_cast<T>(B[gk * ldb + gn]) : T(0);
      }
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int l = 0; l < LA; ++l) {
      const int idx = tid + l * kSimtThreads;
      sm.a[buf][idx % BK][idx / BK] = ra[l];
    }
#pragma unroll
    for (int l = 0; l < LB; ++l) {
      const int idx = tid + l * kSimtThreads;
      if constexpr (kTransB)
        sm.b[buf][idx % BK][idx / BK] = rb[l];
      else
        sm.b[buf][idx / BN][idx % BN] = rb[l];
    }
  };

  load(0);
  store(0);
  __syncthreads();
  constexpr int VM = TM / 2, VN = TN / 2;
  for (int64_t kt = 0; kt < n_k; ++kt) {
    const int cur = static_cast<int>(kt & 1);
    if (kt + 1 < n_k) load(kt + 1);
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      T a[TM], b[TN];
      T a_lo[VM], a_hi[VM], b_lo[VN], b_hi[VN];
      load_vec<T, VM>(&sm.a[cur][k][ty * VM], a_lo);
      load_vec<T, VM>(&sm.a[cur][k][BM / 2 + ty * VM], a_hi);
      load_vec<T, VN>(&sm.b[cur][k][tx * VN], b_lo);
      load_vec<T, VN>(&sm.b[cur][k][BN / 2 + tx * VN], b_hi);
#pragma unroll
      for (int v = 0; v < VM; ++v) {
        a[v] = a_lo[v];
        a[VM + v] = a_hi[v];
      }
#pragma unroll
      for (int v = 0; v < VN; ++v) {
        b[v] = b_lo[v];
        b[VN + v] = b_hi[v];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    if (kt + 1 < n_k) store(cur ^ 1);
    __syncthreads();
  }
}

// ---- plain GEMM: C = alpha * A op(B) + beta * C, optionally split over K ---------------------------
// A K split writes each split's partial product to its own slice of a workspace, and a second kernel
// adds the slices to C in split order: no atomics, so the result is the same bits on every run. The
// split count depends only on the shapes, never on the device.

template <class TA, class TB, class T>
struct GemmArgs {
  const TA* a;
  int64_t lda;
  const TB* b;
  int64_t ldb;
  T* c;
  int64_t ldc;
  int64_t m, n, k;
  T alpha, beta;
  int64_t k_split;  // K range per blockIdx.z (multiple of BK)
  T* partial;       // gridDim.z > 1: split z writes its m x n product to partial + z * m * n
};

template <class TA, class TB, class T, bool kTransB>
__global__ void __launch_bounds__(kSimtThreads) gemm_kernel(GemmArgs<TA, TB, T> g) {
  using C = Simt<T>;
  __shared__ SimtShared<T> sm;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * C::BM, c0 = static_cast<int64_t>(blockIdx.y) * C::BN;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * g.k_split;
  const int64_t k_end = k_begin + g.k_split < g.k ? k_begin + g.k_split : g.k;
  T acc[C::TM][C::TN];
  simt_tile<TA, TB, T, kTransB>(g.a, g.lda, g.b, g.ldb, g.m, g.n, r0, c0, k_begin, k_end, sm, acc);
  const int tx = simt_tx(), ty = simt_ty();
  T* slice = gridDim.z > 1 ? g.partial + static_cast<int64_t>(blockIdx.z) * g.m * g.n : nullptr;
#pragma unroll
  for (int i = 0; i < C::TM; ++i) {
    const int64_t r = r0 + simt_row<T>(ty, i);
    if (r >= g.m) continue;
#pragma unroll
    for (int j = 0; j < C::TN; ++j) {
      const int64_t c = c0 + simt_col<T>(tx, j);
      if (c >= g.n) continue;
      if (slice) {
        slice[r * g.n + c] = acc[i][j];
      } else {
        T* p = g.c + r * g.ldc + c;
        *p = g.beta == T(0) ? g.alpha * acc[i][j] : fma(g.alpha, acc[i][j], g.beta * *p);
      }
    }
  }
}

// C += alpha * (slice 0 + slice 1 + ...), each element summed in split order (beta == 1 with a split).
template <class T>
__global__ void splitk_reduce_kernel(const T* __restrict__ partial, int64_t splits, int64_t m, int64_t n, T alpha,
                                     T* __restrict__ c, int64_t ldc) {
  const int64_t total = m * n;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T* p = c + (idx / n) * ldc + idx % n;
    T v = *p;
    for (int64_t z = 0; z < splits; ++z) v = fma(alpha, partial[z * total + idx], v);
    *p = v;
  }
}

// Host launcher. allow_split_k (requires beta == 1): split K when the output alone cannot fill the
// GPU; partial products go to stream-ordered scratch and are added in split order (deterministic).
template <class TA, class TB, class T, bool kTransB>
void gemm(const TA* a, int64_t lda, const TB* b, int64_t ldb, T* c, int64_t ldc, int64_t m, int64_t n, int64_t k,
          T alpha, T beta, cudaStream_t stream, bool allow_split_k = false) {
  using C = Simt<T>;
  if (m <= 0 || n <= 0) return;
  GemmArgs<TA, TB, T> g{a, lda, b, ldb, c, ldc, m, n, k, alpha, beta, k > 0 ? k : 1, nullptr};
  const int64_t tiles_m = ceil_div(m, C::BM), tiles_n = ceil_div(n, C::BN);
  int64_t splits = 1;
  if (allow_split_k && beta == T(1) && k > 0) {
    // Enough CTAs to fill the GPU (~2 waves on 132 SMs) when the output is small and K is long.
    const int64_t want = 264 / (tiles_m * tiles_n);
    const int64_t max_by_k = k / (16 * C::BK);
    splits = want < max_by_k ? want : max_by_k;
    if (splits < 1) splits = 1;
    if (splits > 65535) splits = 65535;
    g.k_split = ceil_div(ceil_div(k, splits), C::BK) * C::BK;
    splits = ceil_div(k, g.k_split);
  }
  require(tiles_n <= 65535, "CUDA gemm: too many column tiles");
  dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n), static_cast<unsigned>(splits));
  if (k <= 0 && beta == T(1)) return;  // nothing to add
  Scratch<T> partial;
  if (splits > 1) {
    partial.reset(splits * m * n, stream);  // <= 264 tiles' worth: tiles_m * tiles_n * splits <= 264
    g.partial = partial.get();
  }
  gemm_kernel<TA, TB, T, kTransB><<<grid, kSimtThreads, 0, stream>>>(g);
  NTKAL_CUDA_LAUNCHED("gemm_kernel");
  if (splits > 1) {
    splitk_reduce_kernel<T><<<grid_for(m * n, 256), 256, 0, stream>>>(partial.get(), splits, m, n, alpha, c, ldc);
    NTKAL_CUDA_LAUNCHED("splitk_reduce_kernel");
  }
}

}  // namespace ntkal::cuda::detail
