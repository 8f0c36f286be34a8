// Thin typed wrappers over BLAS/LAPACK. blas.cpp is the only file that names BLAS symbols.
// Only LAPACK's symmetric eigensolver is used (the principal directions of the nearest-centre
// shortlist, whose winners are decided on exact float64 distances, so rounding never changes a
// result); every matrix product goes through the fixed-order kernels of fixed_order.hpp.
// All matrices are row-major; 32-bit BLAS integers, so callers chunk to keep dims < 2^31.
#pragma once
#include <cstdint>

namespace ntkal::blas {

// Eigen-decomposition of a symmetric matrix (lower triangle read): ascending eigenvalues into w,
// eigenvectors into the rows of a (row i pairs with w[i]). Returns LAPACK info.
int syev(int64_t n, double* a, int64_t lda, double* w);
void set_num_threads(int n);
const char* provider();

}  // namespace ntkal::blas
