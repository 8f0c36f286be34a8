// Posterior-variance scoring of ragged blocks: PV_b = noise_var * sum_{r in b} ||M phi_r||^2 with
// M = sqrt(c) L^{-1} lower triangular. One fused kernel per call: the whitening GEMM, the squared
// norm of every whitened row and the per-block sums (block_sums.cuh); W = Phi M^T never reaches
// device memory, and the zero upper triangle of M is skipped (about half the FLOPs at d = 1024).
//
// Arithmetic: FP32 SIMT (default), FP64 SIMT (float64 operator), or tensor cores via mma.sync with
// TF32 (m16n8k8) or BF16 (m16n8k16) inputs and FP32 accumulation.
#include <cuda_bf16.h>

#include "block_sums.cuh"
#include "common.cuh"
#include "gemm_simt.cuh"

namespace ntkal::cuda {
namespace detail {

__global__ void block_sum_fixup_kernel(BlockSums s, int64_t n_tiles, int bm) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n_tiles) return;
  const int64_t r_begin = t * bm;
  const int64_t r_end = r_begin + bm < s.n_rows ? r_begin + bm : s.n_rows;
  const int64_t b = block_of_row(s.offsets, s.n_blocks, r_end - 1);
  const int64_t be = block_end(s.offsets, b);
  if (be <= r_end || block_begin(s.offsets, b) < r_begin) return;  // inside the tile, or begun earlier
  double total = s.tail[t];
  for (int64_t t2 = t + 1; t2 * bm < be; ++t2) total += s.head[t2];
  write_block_value(s, b, total);
}

void block_sum_fixup(const BlockSums& s, int64_t n_tiles, int bm, cudaStream_t stream) {
  if (!s.offsets || n_tiles <= 1) return;
  block_sum_fixup_kernel<<<grid_for(n_tiles, 256, int64_t(1) << 30), 256, 0, stream>>>(s, n_tiles, bm);
  NTKAL_CUDA_LAUNCHED("block_sum_fixup_kernel");
}

// ---- tensor-core kernel (sm_80+: mma.sync) ----------------------------------------------------------
//
// CTA: 256 threads = 8 warps as 2 (rows) x 4 (columns); tile 128 x 128; each warp 64 x 32 =
// 4 x 4 fragments of m16n8. K step: 32 TF32 or 32 BF16 values per row. Shared tiles hold the
// converted inputs as 32-bit words, rows k-contiguous (both operands: A rows and Bt rows), padded so
// that fragment loads (row g, word t) hit 32 distinct banks. Fragment layouts follow the PTX ISA
// "Matrix fragments for mma.m16n8k8 (.tf32)" and "mma.m16n8k16 (.bf16)": lane = 4 g + t,
// A regs (row g / g+8, word t / t+4), B regs (column g, word t / t+4), C (rows g / g+8, cols 2t, 2t+1).

enum class Mma { TF32, BF16 };

template <Mma kKind>
struct MmaCfg {
  static constexpr int BM = 128, BN = 128;
  static constexpr int BK = 32;                                  // input elements per row per K step
  static constexpr int KW = kKind == Mma::TF32 ? 32 : 16;        // 32-bit words per row per K step
  static constexpr int LDW = KW + 4;                             // padded row stride in words
  static constexpr int STEPS = KW / 8;                           // mma K sub-steps (8 words each)
};

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<uint32_t*>(&v);
}

template <Mma kKind>
__device__ __forceinline__ void mma16x8(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kKind == Mma::TF32) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // built only for sm_80+; the host refuses tensor-core modes on older devices
#endif
}

// 4 consecutive floats of row `r` starting at column `k`, zero outside [0, rows) x [0, k_end).
template <bool kVec>
__device__ __forceinline__ float4 load4(const float* __restrict__ p, int64_t ld, int64_t r, int64_t rows, int64_t k,
                                        int64_t k_end) {
  if (r >= rows) return make_float4(0.f, 0.f, 0.f, 0.f);
  const float* q = p + r * ld + k;
  if (kVec && k + 3 < k_end) return *reinterpret_cast<const float4*>(q);
  float4 v;
  v.x = k < k_end ? q[0] : 0.f;
  v.y = k + 1 < k_end ? q[1] : 0.f;
  v.z = k + 2 < k_end ? q[2] : 0.f;
  v.w = k + 3 < k_end ? q[3] : 0.f;
  return v;
}

template <Mma kKind>
__device__ __forceinline__ void store4(uint32_t* row, int k, float4 v) {
  if constexpr (kKind == Mma::TF32) {
    *reinterpret_cast<uint4*>(row + k) = make_uint4(to_tf32(v.x), to_tf32(v.y), to_tf32(v.z), to_tf32(v.w));
  } else {
    *reinterpret_cast<uint2*>(row + k / 2) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
  }
}

template <Mma kKind, bool kVec>
__global__ void __launch_bounds__(256) rownorm_blocks_mma_kernel(detail::RowNormArgs<float, float, float> g) {
  using C = MmaCfg<kKind>;
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, LDW = C::LDW;
  __shared__ __align__(16) uint32_t s_a[BM * LDW];
  __shared__ __align__(16) uint32_t s_b[BN * LDW];
  __shared__ double s_part[4][BM];
  __shared__ double s_norm[BM];
  __shared__ int64_t s_blk[BM];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3, gq = lane >> 2, tq = lane & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;

  double sq[4][2];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) sq[mi][0] = sq[mi][1] = 0.0;

  for (int64_t c0 = 0; c0 < g.n; c0 += BN) {
    const int64_t k_end = g.lower_tri ? (c0 + BN < g.k ? c0 + BN : g.k) : g.k;
    const int64_t n_k = ceil_div(k_end, BK);
    float acc[4][4][4];
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;

    // each thread moves 4 float4 of A and 4 of Bt per K step (128 rows x 8 float4 each)
    float4 ra[4], rb[4];
    auto load = [&](int64_t kt) {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int idx = tid + l * 256, row = idx >> 3, k = (idx & 7) * 4;
        ra[l] = load4<kVec>(g.a, g.lda, r0 + row, g.m, kt * BK + k, k_end);
        rb[l] = load4<kVec>(g.bt, g.ldb, c0 + row, g.n, kt * BK + k, k_end);
      }
    };
    if (n_k > 0) load(0);
    for (int64_t kt = 0; kt < n_k; ++kt) {
      __syncthreads();  // everyone is done reading the previous step's tiles
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int idx = tid + l * 256, row = idx >> 3, k = (idx & 7) * 4;
        store4<kKind>(s_a + row * LDW, k, ra[l]);
        store4<kKind>(s_b + row * LDW, k, rb[l]);
      }
      __syncthreads();
      if (kt + 1 < n_k) load(kt + 1);  // global loads overlap the tensor-core work below
#pragma unroll
      for (int s = 0; s < C::STEPS; ++s) {
        const int w = s * 8 + tq;
        uint32_t af[4][4], bf[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
          const uint32_t* p = s_a + (warp_m * 64 + mi * 16 + gq) * LDW + w;
          af[mi][0] = p[0];
          af[mi][1] = p[8 * LDW];
          af[mi][2] = p[4];
          af[mi][3] = p[8 * LDW + 4];
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const uint32_t* p = s_b + (warp_n * 32 + ni * 8 + gq) * LDW + w;
          bf[ni][0] = p[0];
          bf[ni][1] = p[4];
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma16x8<kKind>(acc[mi][ni], af[mi], bf[ni]);
      }
    }
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const float* c = acc[mi][ni];
        sq[mi][0] += static_cast<double>(c[0]) * c[0] + static_cast<double>(c[1]) * c[1];
        sq[mi][1] += static_cast<double>(c[2]) * c[2] + static_cast<double>(c[3]) * c[3];
      }
  }
  // reduce over the 4 lanes of a row (t), then over the 4 column warps in fixed order
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      double v = sq[mi][h];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if (tq == 0) s_part[warp_n][warp_m * 64 + mi * 16 + h * 8 + gq] = v;
    }
  __syncthreads();
  for (int i = tid; i < BM; i += 256) s_norm[i] = ((s_part[0][i] + s_part[1][i]) + s_part[2][i]) + s_part[3][i];
  __syncthreads();
  block_sum_epilogue<BM>(g.sums, blockIdx.x, r0, s_norm, s_blk);
}

template <Mma kKind>
void rownorm_blocks_mma(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t m, int64_t n, int64_t k,
                        bool lower_tri, BlockSums sums, cudaStream_t stream) {
  using C = MmaCfg<kKind>;
  if (m <= 0) return;
  int dev = 0, major = 0;
  NTKAL_CUDA_CHECK(cudaGetDevice(&dev));
  NTKAL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  require(major >= 8, "Posterior.variance: matmul='tf32'/'bf16' needs a GPU of compute capability 8.0 or newer");
  const int64_t tiles = ceil_div(m, C::BM);
  Scratch<double> head(tiles, stream), tail(tiles, stream);
  sums.head = head.get();
  sums.tail = tail.get();
  RowNormArgs<float, float, float> g{a, lda, bt, ldb, m, n, k, lower_tri, sums};
  const bool vec = lda % 4 == 0 && ldb % 4 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(bt) % 16 == 0;
  const unsigned grid = static_cast<unsigned>(tiles);
  if (vec)
    rownorm_blocks_mma_kernel<kKind, true><<<grid, 256, 0, stream>>>(g);
  else
    rownorm_blocks_mma_kernel<kKind, false><<<grid, 256, 0, stream>>>(g);
  NTKAL_CUDA_LAUNCHED("rownorm_blocks_mma_kernel");
  block_sum_fixup(sums, tiles, C::BM, stream);
}

template <class T>
__global__ void count_nonfinite_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t ld,
                                       unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * cols;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    local += isfinite(x[(i / cols) * ld + i % cols]) ? 0ull : 1ull;
  for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
  if ((threadIdx.x & 31) == 0 && local) atomicAdd(count, local);
}

template <class T>
int64_t count_nonfinite_impl(const T* x, int64_t rows, int64_t cols, int64_t ld, void* stream) {
  require(rows >= 0 && cols >= 0 && ld >= cols, "count_nonfinite: invalid matrix shape");
  const int64_t n = rows * cols;
  if (n <= 0) return 0;
  DeviceGuard guard(x);
  cudaStream_t s = as_stream(stream);
  Scratch<unsigned long long> count(1, s);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(count.get(), 0, sizeof(unsigned long long), s));
  count_nonfinite_kernel<T><<<grid_for(n, 256, 4096), 256, 0, s>>>(x, rows, cols, ld, count.get());
  NTKAL_CUDA_LAUNCHED("count_nonfinite_kernel");
  unsigned long long host = 0;
  NTKAL_CUDA_CHECK(cudaMemcpyAsync(&host, count.get(), sizeof(host), cudaMemcpyDeviceToHost, s));
  NTKAL_CUDA_CHECK(cudaStreamSynchronize(s));
  return static_cast<int64_t>(host);
}

BlockSums pv_sums(const int64_t* offsets, int64_t n_blocks, int64_t n_rows, double noise_var, bool intensive,
                  double* out) {
  return BlockSums{offsets, n_blocks, n_rows, noise_var, intensive, false, out, nullptr, nullptr};
}

void check_pv_args(int64_t n_rows, int64_t dim, const int64_t* offsets, int64_t n_blocks, double noise_var) {
  require(n_rows >= 0 && dim > 0, "Posterior.variance: rows must be (n_rows, dim) with dim > 0");
  require(offsets != nullptr || n_blocks == n_rows,
          "Posterior.variance: without offsets there must be one block per row");
  require(noise_var > 0.0, "Posterior.variance: noise_var must be > 0");
}

}  // namespace detail

int64_t count_nonfinite(const float* x, int64_t rows, int64_t cols, int64_t ld, void* stream) {
  return detail::count_nonfinite_impl(x, rows, cols, ld, stream);
}
int64_t count_nonfinite(const double* x, int64_t rows, int64_t cols, int64_t ld, void* stream) {
  return detail::count_nonfinite_impl(x, rows, cols, ld, stream);
}

void block_variance(const float* rows, int64_t n_rows, int64_t dim, const float* whiten, const int64_t* offsets,
                    int64_t n_blocks, double noise_var, bool intensive, Matmul matmul, double* out, void* stream) {
  using namespace detail;
  check_pv_args(n_rows, dim, offsets, n_blocks, noise_var);
  if (n_blocks <= 0) return;
  DeviceGuard guard(out);
  cudaStream_t s = as_stream(stream);
  // empty blocks own no rows and keep this zero
  NTKAL_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * n_blocks, s));
  BlockSums sums = pv_sums(offsets, n_blocks, n_rows, noise_var, intensive, out);
  switch (matmul) {
    case Matmul::Float32:
      rownorm_blocks_simt<float, float, float>(rows, dim, whiten, dim, n_rows, dim, dim, true, sums, s);
      break;
    case Matmul::TF32:
      rownorm_blocks_mma<Mma::TF32>(rows, dim, whiten, dim, n_rows, dim, dim, true, sums, s);
      break;
    case Matmul::BF16:
      rownorm_blocks_mma<Mma::BF16>(rows, dim, whiten, dim, n_rows, dim, dim, true, sums, s);
      break;
  }
}

void block_variance(const float* rows, int64_t n_rows, int64_t dim, const double* whiten, const int64_t* offsets,
                    int64_t n_blocks, double noise_var, bool intensive, double* out, void* stream) {
  using namespace detail;
  check_pv_args(n_rows, dim, offsets, n_blocks, noise_var);
  if (n_blocks <= 0) return;
  DeviceGuard guard(out);
  cudaStream_t s = as_stream(stream);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double) * n_blocks, s));
  BlockSums sums = pv_sums(offsets, n_blocks, n_rows, noise_var, intensive, out);
  rownorm_blocks_simt<float, double, double>(rows, dim, whiten, dim, n_rows, dim, dim, true, sums, s);
}

}  // namespace ntkal::cuda
