// Fused "squared norm + per-block sum" epilogue shared by the scoring kernels (SIMT and tensor core)
// and the greedy-PV update. A CTA owns BM consecutive rows and loops over every column tile, so it
// holds each row's complete squared norm. Blocks (contiguous row ranges) that lie inside the tile
// are written directly; a block that straddles tile boundaries leaves its partial sums in per-tile
// head/tail slots, and one fix-up thread per such block adds them in tile order afterwards.
// Every output is written by exactly one thread in a fixed summation order: results are
// deterministic, no atomics.
#pragma once
#include <cstdint>

#include "common.cuh"
#include "gemm_simt.cuh"

namespace ntkal::cuda::detail {

struct BlockSums {
  const int64_t* offsets;  // device, n_blocks + 1; nullptr = one row per block
  int64_t n_blocks;
  int64_t n_rows;
  double alpha;     // out = alpha * sum (noise_var for PV)
  bool intensive;   // divide by the block's row count
  bool subtract;    // out -= value instead of out = value
  double* out;      // n_blocks
  double* head;     // per row tile: partial sum of the block that began in an earlier tile
  double* tail;     // per row tile: partial sum of the block that continues into later tiles
};

__device__ __forceinline__ void write_block_value(const BlockSums& s, int64_t b, double total) {
  double v = s.alpha * total;
  if (s.intensive) {
    const int64_t size = block_end(s.offsets, b) - block_begin(s.offsets, b);
    if (size > 0) v /= static_cast<double>(size);
  }
  if (s.subtract)
    s.out[b] -= v;
  else
    s.out[b] = v;
}

// s_norm[i]: squared norm of row r0 + i (i < BM); s_blk: BM int64 of scratch shared memory.
template <int BM>
__device__ void block_sum_epilogue(const BlockSums& s, int64_t tile, int64_t r0, const double* s_norm,
                                   int64_t* s_blk) {
  const int64_t left = s.n_rows - r0;
  const int nr = static_cast<int>(left < BM ? left : BM);
  for (int i = threadIdx.x; i < nr; i += blockDim.x) s_blk[i] = block_of_row(s.offsets, s.n_blocks, r0 + i);
  __syncthreads();
  for (int i = threadIdx.x; i < nr; i += blockDim.x) {
    const int64_t b = s_blk[i];
    if (i > 0 && s_blk[i - 1] == b) continue;  // not the first row of its segment
    double total = 0.0;
    for (int j = i; j < nr && s_blk[j] == b; ++j) total += s_norm[j];
    const bool starts_here = block_begin(s.offsets, b) >= r0;
    const bool ends_here = block_end(s.offsets, b) <= r0 + nr;
    if (starts_here && ends_here)
      write_block_value(s, b, total);
    else if (!starts_here)
      s.head[tile] = total;  // only the segment at i == 0 can have started earlier
    else
      s.tail[tile] = total;  // only the last segment can continue
  }
}

// Launches the fix-up pass (needed only with offsets: without them no block straddles).
void block_sum_fixup(const BlockSums& s, int64_t n_tiles, int bm, cudaStream_t stream);

// ---- SIMT fused kernel: sums of ||op(Bt) a_r||^2 over row blocks ----------------------------------

template <class TA, class TB, class T>
struct RowNormArgs {
  const TA* a;  // M x K rows
  int64_t lda;
  const TB* bt;  // N x K (W = A Bt^T)
  int64_t ldb;
  int64_t m, n, k;
  bool lower_tri;  // Bt[n][k] == 0 for k > n: column tile c0 needs only k < c0 + BN
  BlockSums sums;
};

template <class TA, class TB, class T>
__global__ void __launch_bounds__(kSimtThreads) rownorm_blocks_simt_kernel(RowNormArgs<TA, TB, T> g) {
  using C = Simt<T>;
  __shared__ SimtShared<T> sm;
  __shared__ double s_norm[C::BM];
  __shared__ int64_t s_blk[C::BM];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * C::BM;
  const int tx = simt_tx(), ty = simt_ty();
  double rs[C::TM];
#pragma unroll
  for (int i = 0; i < C::TM; ++i) rs[i] = 0.0;
  for (int64_t c0 = 0; c0 < g.n; c0 += C::BN) {
    const int64_t k_end = g.lower_tri ? (c0 + C::BN < g.k ? c0 + C::BN : g.k) : g.k;
    T acc[C::TM][C::TN];
    simt_tile<TA, TB, T, true>(g.a, g.lda, g.bt, g.ldb, g.m, g.n, r0, c0, 0, k_end, sm, acc);
#pragma unroll
    for (int i = 0; i < C::TM; ++i)
#pragma unroll
      for (int j = 0; j < C::TN; ++j) {
        const double v = static_cast<double>(acc[i][j]);
        rs[i] = fma(v, v, rs[i]);
      }
  }
  // the 16 threads sharing rows (same ty) are 16 consecutive lanes of one warp
#pragma unroll
  for (int i = 0; i < C::TM; ++i)
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) rs[i] += __shfl_xor_sync(0xffffffffu, rs[i], o);
  if (tx == 0)
#pragma unroll
    for (int i = 0; i < C::TM; ++i) s_norm[simt_row<T>(ty, i)] = rs[i];
  __syncthreads();
  block_sum_epilogue<C::BM>(g.sums, blockIdx.x, r0, s_norm, s_blk);
}

// out (per block) = / -= alpha * sum_rows ||Bt a_r||^2, T the arithmetic (float or double).
// head/tail scratch is allocated here on the stream.
template <class TA, class TB, class T>
void rownorm_blocks_simt(const TA* a, int64_t lda, const TB* bt, int64_t ldb, int64_t m, int64_t n, int64_t k,
                         bool lower_tri, BlockSums sums, cudaStream_t stream) {
  using C = Simt<T>;
  if (m <= 0) return;
  const int64_t tiles = ceil_div(m, C::BM);
  Scratch<double> head(tiles, stream), tail(tiles, stream);
  sums.head = head.get();
  sums.tail = tail.get();
  RowNormArgs<TA, TB, T> g{a, lda, bt, ldb, m, n, k, lower_tri, sums};
  rownorm_blocks_simt_kernel<TA, TB, T><<<static_cast<unsigned>(tiles), kSimtThreads, 0, stream>>>(g);
  NTKAL_CUDA_LAUNCHED("rownorm_blocks_simt_kernel");
  block_sum_fixup(sums, tiles, C::BM, stream);
}

}  // namespace ntkal::cuda::detail
