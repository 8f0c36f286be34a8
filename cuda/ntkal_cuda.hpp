// Host-only interface of the ntkal CUDA backend: plain C++ declarations over raw device pointers.
// No CUDA header is included, so the pybind11 bindings compile with the host compiler alone.
//
// Conventions
// * Matrices are row-major with an explicit leading dimension (elements between rows).
// * `stream` is a cudaStream_t passed as void* (nullptr: the legacy default stream). Work is
//   enqueued on it; a function returns without synchronising unless its comment says it does.
// * Every function first makes current the device that owns its first data pointer, so callers
//   need not match the runtime's current device to the data.
// * Argument errors throw ntkal::InvalidArgument (a std::invalid_argument); CUDA failures throw
//   ntkal::cuda::CudaError with the runtime's message.
//
// Design: the posterior's A (d x d, float64) and its Cholesky stay on the host. A is accumulated
// from the (small) training set, factored once per posterior state in O(d^3) = ~0.1 s at d = 1024
// with LAPACK, and the same factor serves the CPU path, so CPU and GPU whiten with bit-identical
// operators. The GPU receives only the whitening operator M = sqrt(c) L^{-1} (float32 for scoring,
// float64 for greedy selection): scoring is then one GEMM, and no GPU solver (cuSOLVER, which is
// absent on the CPU build machines) is needed.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "options.hpp"

namespace ntkal::cuda {

using ntkal::DistanceMethod;
using ntkal::Matmul;
using ntkal::Precision;
using ntkal::SketchKind;

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- runtime ----------------------------------------------------------------------------------
int device_count() noexcept;                       // 0 when there is no driver or no device
std::vector<std::string> device_names() noexcept;  // "NVIDIA H100 80GB HBM3 (sm_90)"; empty when none
int runtime_version() noexcept;                    // CUDA runtime this library was built with (13000 = 13.0)
void synchronize(void* stream);                    // waits for all work on stream
// High-water mark in bytes of the backend's scratch memory (the device's default stream-ordered
// memory pool) since the last reset; reset=true restarts it from the current use. For benchmarks:
// framework allocators (PyTorch, CuPy) do not see this memory.
int64_t scratch_peak_bytes(int device, bool reset);

// Number of non-finite entries of the rows x cols matrix x with leading dimension ld.
// Synchronises the stream.
int64_t count_nonfinite(const float* x, int64_t rows, int64_t cols, int64_t ld, void* stream);
int64_t count_nonfinite(const double* x, int64_t rows, int64_t cols, int64_t ld, void* stream);

// ---- sketch projection --------------------------------------------------------------------------
struct SketchSpec {
  SketchKind kind;
  uint64_t seed;
  int nnz;  // sparse_sign only
  int64_t n_params;
  int64_t dim;
};

// out (m x dim, ld ldo) += J (m x p_chunk, ld ldj) S[col_offset : col_offset + p_chunk, :], with S the
// same matrix as the CPU ntkal::Sketch (philox.hpp). The sketch is generated on the fly, one tile of
// parameters at a time, into scratch memory from the stream-ordered allocator. float64 J accumulates
// in float64 and is rounded once, as on the CPU. No atomics: the same inputs give the same bits on
// every run; sparse_sign also gives the CPU's bits (same summation order), gaussian agrees with the
// CPU within float rounding (its K split orders the sums differently).
void sketch_project(const SketchSpec& s, const float* j, int64_t m, int64_t p_chunk, int64_t ldj,
                    int64_t col_offset, float* out, int64_t ldo, void* stream);
void sketch_project(const SketchSpec& s, const double* j, int64_t m, int64_t p_chunk, int64_t ldj,
                    int64_t col_offset, float* out, int64_t ldo, void* stream);
// Rows S[p_begin:p_end, :] as float64 (tests: entry-for-entry parity with the CPU sketch).
void sketch_dense(const SketchSpec& s, int64_t p_begin, int64_t p_end, double* out, void* stream);

// ---- posterior variance ---------------------------------------------------------------------------
// Matmul (options.hpp): Float32 = SIMT FP32 (default, "exact" float32); TF32 / BF16 = tensor cores
// (mma.sync) with inputs rounded to TF32 / BF16 and FP32 accumulation.

// out[b] = noise_var * sum over rows r of block b of ||M phi_r||^2 (divided by the block's row count
// when intensive), M = whiten (dim x dim, lower triangular, row-major; the zeros above the diagonal
// are skipped). offsets: device int64 (n_blocks + 1), or nullptr for one row per block. One fused
// kernel: whitening GEMM + squared norm + per-block sums; W = Phi M^T is never stored.
void block_variance(const float* rows, int64_t n_rows, int64_t dim, const float* whiten, const int64_t* offsets,
                    int64_t n_blocks, double noise_var, bool intensive, Matmul matmul, double* out, void* stream);
// Float64 operator: FP64 SIMT GEMM on float32 rows (the CPU "float64" posterior precision).
void block_variance(const float* rows, int64_t n_rows, int64_t dim, const double* whiten, const int64_t* offsets,
                    int64_t n_blocks, double noise_var, bool intensive, double* out, void* stream);

// ---- top-k ----------------------------------------------------------------------------------------
// The k largest values, largest first, ties -> lower index first (stable radix sort).
// indices: device int64 (n) or nullptr for base, base + 1, ...; out_values (k), out_indices (k).
void top_k(const double* values, const int64_t* indices, int64_t n, int64_t base, int64_t k, double* out_values,
           int64_t* out_indices, void* stream);

// ---- batch selection ----------------------------------------------------------------------------
// Greedy PV with block Woodbury updates, all in float64 on the device, lazy like the CPU's (same
// picks: plain greedy, ties -> lower index). Device memory O(n_blocks + n_picked_rows x dim): the
// whitened pool is never stored. whiten: M = sqrt(c) L^{-1} as float64 (dim x dim). offsets_host and
// offsets_dev hold the same (n_blocks + 1) offsets (nullptr both: one row per block). Synchronises
// once per pick and once per activation batch. out_*: device arrays of n entries.
void select_greedy_pv(const float* rows, int64_t n_rows, int64_t dim, const int64_t* offsets_host,
                      const int64_t* offsets_dev, int64_t n_blocks, const double* whiten, double noise_var, int64_t n,
                      int64_t* out_indices, double* out_scores, void* stream);

// LCMD / MaxDist on one vector per structure (x: n_pool x e, train: n_train x e or nullptr), same
// semantics as the CPU select_by_distance: train vectors are the initial centres, each candidate
// owned by its exact float64 nearest train vector (ties: lowest index), found by a blocked GEMM on
// train-mean-centred data that shortlists and an exact float64 check that decides; without train
// vectors the first pick is the largest norm. init: arithmetic of the shortlisting GEMM.
// Fully asynchronous (the picks stay on the device). out_*: device arrays of n entries.
void select_by_distance(DistanceMethod method, const float* x, int64_t n_pool, const float* train, int64_t n_train,
                        int64_t e, int64_t n, Precision init, int64_t* out_indices, double* out_scores,
                        void* stream);

// Gram sketch z (n_blocks x out_dim, float32) of ragged blocks, same definition and generator
// streams as the CPU ntkal::gram_sketch. offsets_host / offsets_dev as in select_greedy_pv.
void gram_sketch(const float* rows, int64_t n_rows, int64_t dim, const int64_t* offsets_host,
                 const int64_t* offsets_dev, int64_t n_blocks, int64_t out_dim, uint64_t seed, float* out,
                 void* stream);

}  // namespace ntkal::cuda
