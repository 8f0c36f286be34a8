// Fixed-order kernels on AVX2 + FMA (compiled with -mavx2 -mfma; called only when the processor
// has both). 8 float / 4 double lanes.
#include <immintrin.h>

#define NTKAL_ISA_NAMESPACE avx2
#include "fixed_order_impl.hpp"

namespace ntkal::fixed {
namespace avx2 {
namespace {
struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int W = 8, MR = 6;
  static constexpr int64_t KC = 256;
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(T x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static T fma1(T a, T b, T c) { return std::fma(a, b, c); }
};
struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4, MR = 6;
  static constexpr int64_t KC = 256;
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(T x) { return _mm256_set1_pd(x); }
  static V zero() { return _mm256_setzero_pd(); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static T fma1(T a, T b, T c) { return std::fma(a, b, c); }
};
}  // namespace
}  // namespace avx2

const KernelTable& avx2_kernels() { return avx2::make_table<avx2::F32, avx2::F64>("avx2"); }

}  // namespace ntkal::fixed
