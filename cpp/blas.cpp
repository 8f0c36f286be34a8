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
enum { kRowMajor = 101 };
enum { kNoTrans = 111, kTrans = 112 };
enum { kUpper = 121, kLower = 122 };
void NTKAL_SYM(cblas_sgemm)(int, int, int, int, int, int, float, const float*, int, const float*, int, float,
                            float*, int);
void NTKAL_SYM(cblas_dgemm)(int, int, int, int, int, int, double, const double*, int, const double*, int, double,
                            double*, int);
void NTKAL_SYM(cblas_dsyrk)(int, int, int, int, int, double, const double*, int, double, double*, int);
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

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  NTKAL_SYM(cblas_sgemm)(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, i32(m), i32(n), i32(k), alpha, a,
                         i32(lda), b, i32(ldb), beta, c, i32(ldc));
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  NTKAL_SYM(cblas_dgemm)(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, i32(m), i32(n), i32(k), alpha, a,
                         i32(lda), b, i32(ldb), beta, c, i32(ldc));
}

void syrk_lower_xtx(int64_t n, int64_t k, double alpha, const double* x, int64_t ldx, double beta, double* c,
                    int64_t ldc) {
  if (n == 0 || k == 0) return;
  NTKAL_SYM(cblas_dsyrk)(kRowMajor, kLower, kTrans, i32(n), i32(k), alpha, x, i32(ldx), beta, c, i32(ldc));
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
