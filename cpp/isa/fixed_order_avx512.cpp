// Fixed-order kernels on AVX-512F (compiled with -mavx512f -mfma; called only when the processor
// has AVX-512F). 16 float / 8 double lanes.
#include <immintrin.h>

#define NTKAL_ISA_NAMESPACE avx512
#include "fixed_order_impl.hpp"

namespace ntkal::fixed {
namespace avx512 {
namespace {
struct F32 {
  using T = float;
  using V = __m512;
  static constexpr int W = 16, MR = 12;
  static constexpr int64_t KC = 128;
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(T x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static T fma1(T a, T b, T c) { return std::fma(a, b, c); }
};
struct F64 {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8, MR = 12;
  static constexpr int64_t KC = 128;
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(T x) { return _mm512_set1_pd(x); }
  static V zero() { return _mm512_setzero_pd(); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static T fma1(T a, T b, T c) { return std::fma(a, b, c); }
};
}  // namespace
}  // namespace avx512

const KernelTable& avx512_kernels() { return avx512::make_table<avx512::F32, avx512::F64>("avx512"); }

}  // namespace ntkal::fixed
