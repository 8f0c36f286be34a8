// Fixed-order kernels without SIMD: std::fma is correctly rounded on every machine (hardware FMA
// or glibc's exact software fallback), so this set gives the same bits as the vector sets.
#define NTKAL_ISA_NAMESPACE scalar
#include "fixed_order_impl.hpp"

namespace ntkal::fixed {
namespace scalar {
namespace {
template <class F>
struct Lanes1 {
  using T = F;
  using V = F;
  static constexpr int W = 1, MR = 6;
  static constexpr int64_t KC = 256;
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V set1(T x) { return x; }
  static V zero() { return T(0); }
  static V fma(V a, V b, V c) { return std::fma(a, b, c); }
  static T fma1(T a, T b, T c) { return std::fma(a, b, c); }
};
}  // namespace
}  // namespace scalar

const KernelTable& scalar_kernels() {
  return scalar::make_table<scalar::Lanes1<float>, scalar::Lanes1<double>>("scalar");
}

}  // namespace ntkal::fixed
