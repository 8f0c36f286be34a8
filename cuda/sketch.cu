// Sketch projection out += J S[col_offset : col_offset + p_chunk] on the GPU. S is generated on the
// fly from philox.hpp -- the same functions the CPU Sketch uses -- one tile of parameters at a time.
// Both kinds give the same bits on every run (no atomics anywhere):
// * gaussian: the tile S[p0 : p0 + TP, :] is written to scratch memory (entries computed in float64
//   exactly as on the CPU, then rounded to the GEMM type), then one SIMT GEMM adds J_tile S_tile.
//   When the output alone cannot fill the GPU the GEMM splits K and adds the split products in split
//   order (gemm_simt.cuh), so its sums are ordered differently from the CPU's single chain per output:
//   equal to the CPU within float rounding, not bit for bit.
// * sparse_sign: every output (row i, column c) is one float64 chain over the parameters that hash to
//   column c, in parameter order then nonzero order, with separate multiply and add -- the CPU's loop
//   (sketch.cpp project_sparse, built with -ffp-contract=off) term for term -- so the result equals
//   the CPU's bit for bit. Per sub-tile of entries one CTA sorts the (bucket, entry) pairs into
//   per-column lists; a gather kernel then walks each column's list with J's sub-tile in shared memory.
#include <cub/block/block_radix_sort.cuh>

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

constexpr int64_t kTileElems = int64_t(1) << 24;  // entries of S per generated Gaussian tile (64 MB as float32)

// ---- sparse sign ----------------------------------------------------------------------------------

constexpr int kSortThreads = 256, kSortItems = 8;
constexpr int kEntryBits = 11;                         // entry index inside a sub-tile
constexpr int kSubEntries = kSortThreads * kSortItems;  // entries sorted by one CTA
static_assert(kSubEntries == 1 << kEntryBits, "a sub-tile's entry index must fill kEntryBits exactly");
constexpr int64_t kSubParams = 512;          // parameters of one sub-tile at most (J tile in shared memory)
constexpr int64_t kTableBytes = int64_t(1) << 24;  // per-column lists of one pass (entries + list offsets)
constexpr int kGatherRows = 8, kGatherThreads = 256, kGatherCols = 2;  // a CTA: 8 rows x 512 columns

// Entries per sub-tile: whole parameters (<= kSubParams of them) when a parameter's nnz entries fit a
// sub-tile, else kSubEntries (a sub-tile then touches at most two parameters).
int64_t entries_per_subtile(int64_t nnz) {
  return nnz <= kSubEntries ? nnz * std::min<int64_t>(kSubParams, kSubEntries / nnz) : kSubEntries;
}

// Sub-tile q = blockIdx.x holds entries [q e_sub, q e_sub + e_sub) of a pass (entry e: parameter
// p_first + e / nnz, nonzero e % nnz). Writes the per-column lists of the sub-tile, sorted by
// (column, entry): entries[q e_sub + rank] = (parameter - the sub-tile's first parameter) << 1 |
// (sign > 0), and seg[q (dim + 1) + c] = rank of column c's first entry (seg[.. + dim] = the count).
__global__ void __launch_bounds__(kSortThreads)
    sparse_lists_kernel(uint64_t seed, int64_t p_first, int64_t n_entries, int nnz, int64_t e_sub, int64_t dim,
                        int end_bit, uint32_t* __restrict__ entries, uint32_t* __restrict__ seg) {
  using Sort = cub::BlockRadixSort<unsigned long long, kSortThreads, kSortItems>;
  __shared__ typename Sort::TempStorage sort_storage;
  __shared__ unsigned char s_sign[kSubEntries];
  __shared__ unsigned long long s_last[kSortThreads];
  const int64_t q = blockIdx.x, e0 = q * e_sub;
  const int n_items = static_cast<int>(e_sub < n_entries - e0 ? e_sub : n_entries - e0);
  // key = column << kEntryBits | entry: unique, so the order is (column, entry) whatever the sort does
  unsigned long long keys[kSortItems];
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) {
    const int el = threadIdx.x * kSortItems + i;
    if (el < n_items) {
      const int64_t e = e0 + el;
      uint32_t bucket;
      int sign;
      philox::sparse_entry(seed, static_cast<uint64_t>(p_first + e / nnz), static_cast<uint32_t>(e % nnz),
                           static_cast<uint32_t>(dim), &bucket, &sign);
      keys[i] = (static_cast<unsigned long long>(bucket) << kEntryBits) | static_cast<unsigned long long>(el);
      s_sign[el] = sign > 0 ? 1 : 0;
    } else {
      keys[i] = ~0ull;  // above every real key within [0, end_bit): sorts last
    }
  }
  Sort(sort_storage).Sort(keys, 0, end_bit);  // blocked arrangement: thread t holds ranks t*8 .. t*8+7
  s_last[threadIdx.x] = keys[kSortItems - 1];
  __syncthreads();  // s_sign and s_last complete
  uint32_t* seg_q = seg + q * (dim + 1);
  uint32_t* ent_q = entries + q * e_sub;
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) {
    const int rank = threadIdx.x * kSortItems + i;
    if (rank >= n_items) break;
    const int64_t col = static_cast<int64_t>(keys[i] >> kEntryBits);
    const unsigned long long before = i > 0 ? keys[i - 1] : (rank > 0 ? s_last[threadIdx.x - 1] : 0ull);
    const int64_t prev_col = rank > 0 ? static_cast<int64_t>(before >> kEntryBits) : -1;
    // columns (prev_col, col] start here: each column's offset is written by exactly one rank
    for (int64_t c = prev_col + 1; c <= col; ++c) seg_q[c] = static_cast<uint32_t>(rank);
    if (rank == n_items - 1)
      for (int64_t c = col + 1; c <= dim; ++c) seg_q[c] = static_cast<uint32_t>(n_items);
    const int el = static_cast<int>(keys[i] & (kSubEntries - 1));
    const int64_t p_local = (e0 + el) / nnz - e0 / nnz;  // < kSubParams
    ent_q[rank] = (static_cast<uint32_t>(p_local) << 1) | s_sign[el];
  }
}

// acc (m x dim, float64) += J[:, pass] S[pass, :] for one pass, sub-tile by sub-tile in order.
// blockIdx.x: 8 rows, blockIdx.y: 512 columns (2 per thread); each output is one chain
// acc = acc + value * x with the entries of its column in (parameter, nonzero) order.
template <class T>
__global__ void __launch_bounds__(kGatherThreads)
    sparse_gather_kernel(const T* __restrict__ j, int64_t ldj, int64_t m, int64_t n_entries, int nnz, int64_t e_sub,
                         const uint32_t* __restrict__ entries, const uint32_t* __restrict__ seg, int64_t dim,
                         double value, double* __restrict__ acc) {
  __shared__ double s_j[kGatherRows][kSubParams];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kGatherRows;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * (kGatherThreads * kGatherCols) + threadIdx.x;
  double a[kGatherRows][kGatherCols];
#pragma unroll
  for (int r = 0; r < kGatherRows; ++r)
#pragma unroll
    for (int cc = 0; cc < kGatherCols; ++cc) {
      const int64_t c = c0 + cc * kGatherThreads;
      a[r][cc] = (i0 + r < m && c < dim) ? acc[(i0 + r) * dim + c] : 0.0;
    }
  const int64_t n_sub = ceil_div(n_entries, e_sub);
  for (int64_t q = 0; q < n_sub; ++q) {
    const int64_t e0 = q * e_sub, e1 = e0 + e_sub < n_entries ? e0 + e_sub : n_entries;
    const int64_t p_first = e0 / nnz, n_p = (e1 - 1) / nnz - p_first + 1;  // <= kSubParams
    __syncthreads();  // the previous sub-tile's reads of s_j are done
    for (int64_t idx = threadIdx.x; idx < kGatherRows * n_p; idx += kGatherThreads) {
      const int64_t r = idx / n_p, k = idx % n_p;
      s_j[r][k] = i0 + r < m ? static_cast<double>(j[(i0 + r) * ldj + p_first + k]) : 0.0;
    }
    __syncthreads();
    const uint32_t* seg_q = seg + q * (dim + 1);
    const uint32_t* ent_q = entries + q * e_sub;
#pragma unroll
    for (int cc = 0; cc < kGatherCols; ++cc) {
      const int64_t c = c0 + cc * kGatherThreads;
      if (c >= dim) continue;
      const uint32_t k_end = seg_q[c + 1];
      for (uint32_t k = seg_q[c]; k < k_end; ++k) {
        const uint32_t w = ent_q[k];
        const uint32_t p = w >> 1;
        const double v = (w & 1u) ? value : -value;
#pragma unroll
        for (int r = 0; r < kGatherRows; ++r) a[r][cc] = __dadd_rn(a[r][cc], __dmul_rn(v, s_j[r][p]));
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kGatherRows; ++r)
#pragma unroll
    for (int cc = 0; cc < kGatherCols; ++cc) {
      const int64_t c = c0 + cc * kGatherThreads;
      if (i0 + r < m && c < dim) acc[(i0 + r) * dim + c] = a[r][cc];
    }
}

// out (m x dim, ld ldo) += float(acc) (acc m x dim contiguous): the CPU's final rounding and add.
__global__ void add_rounded_kernel(const double* __restrict__ acc, int64_t m, int64_t dim, float* __restrict__ out,
                                   int64_t ldo) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < m * dim;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / dim, c = idx % dim;
    out[i * ldo + c] = __fadd_rn(out[i * ldo + c], __double2float_rn(acc[idx]));
  }
}

int bit_width(int64_t x) {
  int bits = 0;
  while (x > 0) {
    ++bits;
    x >>= 1;
  }
  return bits;
}

template <class T>
void project_sparse(const SketchSpec& sk, const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                    float* out, int64_t ldo, cudaStream_t s) {
  const int64_t dim = sk.dim, nnz = sk.nnz;
  const int64_t col_groups = ceil_div(dim, int64_t(kGatherThreads) * kGatherCols);
  require(col_groups <= 65535, "Sketch.project: dim too large for the GPU sparse kernel (at most 33553920)");
  const int64_t e_sub = entries_per_subtile(nnz);
  // a pass: whole parameters, and about kTableBytes of lists (at least one parameter)
  const int64_t subtiles = std::max<int64_t>(1, kTableBytes / (4 * (e_sub + dim + 1)));
  const int64_t pass_params = std::max<int64_t>(1, subtiles * e_sub / nnz);
  const int64_t max_sub = ceil_div(std::min(pass_params, p_chunk) * nnz, e_sub);
  Scratch<uint32_t> entries(max_sub * e_sub, s), seg(max_sub * (dim + 1), s);
  Scratch<double> acc(m * dim, s);
  NTKAL_CUDA_CHECK(cudaMemsetAsync(acc.get(), 0, sizeof(double) * m * dim, s));
  // the CPU's value: float(+-1 / sqrt(nnz)), used in float64
  const double value = static_cast<double>(static_cast<float>(1.0 / std::sqrt(static_cast<double>(nnz))));
  const int end_bit = kEntryBits + bit_width(dim);  // every real key < 2^end_bit - 1
  const dim3 gather_grid(static_cast<unsigned>(ceil_div(m, kGatherRows)), static_cast<unsigned>(col_groups));
  for (int64_t p0 = 0; p0 < p_chunk; p0 += pass_params) {
    const int64_t n_entries = std::min(pass_params, p_chunk - p0) * nnz;
    const int64_t n_sub = ceil_div(n_entries, e_sub);
    sparse_lists_kernel<<<static_cast<unsigned>(n_sub), kSortThreads, 0, s>>>(
        sk.seed, col_offset + p0, n_entries, sk.nnz, e_sub, dim, end_bit, entries.get(), seg.get());
    NTKAL_CUDA_LAUNCHED("sparse_lists_kernel");
    sparse_gather_kernel<T><<<gather_grid, kGatherThreads, 0, s>>>(j + p0, ldj, m, n_entries, sk.nnz, e_sub,
                                                                  entries.get(), seg.get(), dim, value, acc.get());
    NTKAL_CUDA_LAUNCHED("sparse_gather_kernel");
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
