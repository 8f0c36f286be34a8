// Engine-owned dense kernels whose results do not depend on the machine, the thread count or the
// chunking: every output element is one sequential chain of fused multiply-adds over the inner
// index, in increasing order, starting from zero (overwrite) or from the old value (add/subtract).
// Vector width only decides how many independent elements run side by side, and threads only split
// output tiles, so the AVX-512, AVX2+FMA and scalar std::fma variants give bitwise-identical
// results. A BLAS call cannot promise that: OpenBLAS kernels (OPENBLAS_CORETYPE) and thread splits
// change the summation order per row.
//
// All matrices are row-major. blas.cpp remains the one file that names BLAS symbols; this one
// names none.
#pragma once
#include <cstdint>

namespace ntkal::fixed {

enum class Update { Overwrite, Add, Subtract };  // C = AB, C += AB, C -= AB

// C (m x n) op= op(A) op(B); op(A) is m x k (A stored k x m when trans_a), op(B) is k x n (B stored
// n x k when trans_b). lower_only: tiles strictly above the diagonal may be skipped (syrk-like use).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, Update update, float* c, int64_t ldc, bool lower_only = false);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
          const double* b, int64_t ldb, Update update, double* c, int64_t ldc, bool lower_only = false);

// norms[i] = ||row i of A B^T||^2 (A n x k, B e x k, float32 products, float64 squared norms in the
// fixed 8-lane order of ntkal::sqnorm) without storing A B^T: the posterior-variance scoring kernel.
void row_sqnorms(int64_t n, int64_t e, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                 double* norms);

// Lower triangle of G (n x n) += X^T X, X is k x n (rows = observations).
void syrk_lower_add(int64_t n, int64_t k, const double* x, int64_t ldx, double* g, int64_t ldg);

// In-place Cholesky of the lower triangle (A = L L^T); the strict upper triangle is zeroed.
// Returns 0, or j + 1 when the j-th pivot is not positive (like LAPACK's info).
int cholesky_lower(int64_t n, double* a, int64_t lda);
// In-place inverse of a lower-triangular matrix (upper triangle left zero).
void inverse_lower(int64_t n, double* a, int64_t lda);
// B (m x n) <- B L^{-T}, L lower n x n: each row b solves L y = b by forward substitution.
void solve_lower_rows(int64_t m, int64_t n, const double* l, int64_t ldl, double* b, int64_t ldb);

// Name of the kernel set in use: "avx512", "avx2" or "scalar". NTKAL_KERNELS=scalar|avx2|avx512
// in the environment picks a set (it must be supported by the processor); results are identical.
const char* kernel_set();

}  // namespace ntkal::fixed
