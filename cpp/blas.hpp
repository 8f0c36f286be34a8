// Thin typed wrappers over BLAS/LAPACK. blas.cpp is the only file that names BLAS symbols.
// Only the nearest-centre shortlists use them (their winners are decided on exact float64
// distances, so BLAS rounding never changes a result); every other product goes through the
// fixed-order kernels of fixed_order.hpp.
// All matrices are row-major; 32-bit BLAS integers, so callers chunk to keep dims < 2^31.
#pragma once
#include <cstdint>

namespace ntkal::blas {

// C = alpha * op(A) * op(B) + beta * C
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc);
// Lower triangle of C (n x n) = alpha * X^T X + beta * C, X is k x n.
void syrk_lower_xtx(int64_t n, int64_t k, double alpha, const double* x, int64_t ldx, double beta, double* c,
                    int64_t ldc);
// Eigen-decomposition of a symmetric matrix (lower triangle read): ascending eigenvalues into w,
// eigenvectors into the rows of a (row i pairs with w[i]). Returns LAPACK info.
int syev(int64_t n, double* a, int64_t lda, double* w);
void set_num_threads(int n);
const char* provider();

}  // namespace ntkal::blas
