// Picks the fixed-order kernel set once: the widest the processor supports, or NTKAL_KERNELS.
// Every set gives the same bits, so the choice only changes speed.
#include "fixed_order.hpp"

#include <cstdlib>
#include <cstring>
#include <string>

#include "common.hpp"
#include "isa/kernel_table.hpp"
#include "nearest_centre.hpp"

namespace ntkal::fixed {

namespace {

bool supported(const char* name) {
  if (std::strcmp(name, "scalar") == 0) return true;
#if defined(NTKAL_X86_KERNELS)
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (std::strcmp(name, "avx2") == 0) return fma && __builtin_cpu_supports("avx2");
  if (std::strcmp(name, "avx512") == 0) return fma && __builtin_cpu_supports("avx512f");
#endif
  return false;
}

const KernelTable& by_name(const char* name) {
#if defined(NTKAL_X86_KERNELS)
  if (std::strcmp(name, "avx512") == 0) return avx512_kernels();
  if (std::strcmp(name, "avx2") == 0) return avx2_kernels();
#endif
  (void)name;
  return scalar_kernels();
}

const KernelTable& choose() {
  if (const char* forced = std::getenv("NTKAL_KERNELS"); forced && *forced) {
    if (!supported(forced))
      throw InvalidArgument(std::string("NTKAL_KERNELS: '") + forced +
                            "' is not a kernel set this build and processor support (scalar, avx2, avx512)");
    return by_name(forced);
  }
  for (const char* name : {"avx512", "avx2"})
    if (supported(name)) return by_name(name);
  return scalar_kernels();
}

const KernelTable& kernels() {
  static const KernelTable& table = choose();
  return table;
}

}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, Update update, float* c, int64_t ldc, bool lower_only) {
  kernels().sgemm(ta, tb, m, n, k, a, lda, b, ldb, update, c, ldc, lower_only);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, Update update, double* c, int64_t ldc, bool lower_only) {
  kernels().dgemm(ta, tb, m, n, k, a, lda, b, ldb, update, c, ldc, lower_only);
}

void row_sqnorms(int64_t n, int64_t e, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                 double* norms) {
  kernels().row_sqnorms(n, e, k, a, lda, b, ldb, &sqnorm, norms);
}

void syrk_lower_add(int64_t n, int64_t k, const double* x, int64_t ldx, double* g, int64_t ldg) {
  gemm(true, false, n, n, k, x, ldx, x, ldx, Update::Add, g, ldg, true);
}

int cholesky_lower(int64_t n, double* a, int64_t lda) { return kernels().cholesky_lower(n, a, lda); }

void inverse_lower(int64_t n, double* a, int64_t lda) { kernels().inverse_lower(n, a, lda); }

void solve_lower_rows(int64_t m, int64_t n, const double* l, int64_t ldl, double* b, int64_t ldb) {
  kernels().solve_lower_rows(m, n, l, ldl, b, ldb);
}

const char* kernel_set() { return kernels().name; }

}  // namespace ntkal::fixed
