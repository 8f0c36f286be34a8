// The single place that names BLAS and LAPACK symbols. The scipy-openblas32 wheel prefixes
// every symbol with `scipy_`; a system BLAS uses the plain names.
#include "blas.hpp"

#include <climits>
#include <algorithm>
#include <stdexcept>
#include <vector>

#if defined(NTKAL_BLAS_SCIPY_OPENBLAS)
#define NTKAL_SYM(name) scipy_##name
#else
#define NTKAL_SYM(name) name
#endif

extern "C" {
void NTKAL_SYM(dsyev_)(const char*, const char*, const int*, double*, const int*, double*, double*, const int*, int*,
                       std::size_t, std::size_t);
#if defined(NTKAL_BLAS_SCIPY_OPENBLAS)
void scipy_openblas_set_num_threads(int);
#else
void openblas_set_num_threads(int) __attribute__((weak));
#endif
}

namespace ntkal::blas {

static int i32(int64_t v) {
  if (v < 0 || v > INT_MAX) throw std::length_error("ntkal: BLAS dimension out of 32-bit range");
  return static_cast<int>(v);
}

// Row-major lower == column-major upper; column-major eigenvectors read row-major are rows.
int syev(int64_t n, double* a, int64_t lda, double* w) {
  int nn = i32(n), ld = i32(lda), info = 0, lwork = -1;
  double query = 0.0;
  NTKAL_SYM(dsyev_)("V", "U", &nn, a, &ld, w, &query, &lwork, &info, 1, 1);
  if (info != 0) return info;
  lwork = static_cast<int>(query);
  std::vector<double> work(static_cast<size_t>(std::max(lwork, 1)));
  NTKAL_SYM(dsyev_)("V", "U", &nn, a, &ld, w, work.data(), &lwork, &info, 1, 1);
  return info;
}

void set_num_threads(int n) {
#if defined(NTKAL_BLAS_SCIPY_OPENBLAS)
  scipy_openblas_set_num_threads(n);
#else
  if (openblas_set_num_threads) openblas_set_num_threads(n);
#endif
}

const char* provider() {
#if defined(NTKAL_BLAS_NAME)
  return NTKAL_BLAS_NAME;
#else
  return "unknown";
#endif
}

}  // namespace ntkal::blas
