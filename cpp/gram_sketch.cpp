// Gram sketch: one fixed-size vector per structure whose inner products estimate
// ||Phi(x) Phi(x')^T||_F^2 = tr(G(x) G(x')), G = Phi^T Phi. Rotation- and permutation-invariant
// because G is; it never sums force rows (those cancel for translation-invariant models).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fixed_order.hpp"
#include "select.hpp"
#include "sketch.hpp"

namespace ntkal {

constexpr uint64_t kGramSeedU = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kGramSeedV = 0xC2B2AE3D27D4EB4Full;

void gram_sketch(const BlocksView& blocks, int64_t out_dim, uint64_t seed, float* out) {
  const int64_t d = blocks.rows.dim, e = out_dim, n_rows = blocks.rows.n_rows;
  if (e <= 0) throw InvalidArgument("gram_sketch: out_dim must be > 0, got " + std::to_string(e));
  // U, V: d x e with N(0, 1/e) entries (the Gaussian sketch), so z_k = sqrt(e) sum_r (phi U)_k (phi V)_k.
  std::vector<double> u64(static_cast<size_t>(d * e)), v64(static_cast<size_t>(d * e));
  Sketch(d, e, SketchKind::Gaussian, seed ^ kGramSeedU, 1).dense(0, d, u64.data());
  Sketch(d, e, SketchKind::Gaussian, seed ^ kGramSeedV, 1).dense(0, d, v64.data());
  std::vector<float> u(u64.begin(), u64.end()), v(v64.begin(), v64.end());
  std::vector<double> acc(static_cast<size_t>(blocks.n_blocks * e), 0.0);
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 20) / std::max(d, e));
  std::vector<float> p(static_cast<size_t>(std::min(chunk, std::max<int64_t>(n_rows, 1)) * e)), q(p.size());
  int64_t block = 0;
  for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
    const int64_t n = std::min(chunk, n_rows - r0);
    const float* src = blocks.rows.data + r0 * d;
    fixed::gemm(false, false, n, e, d, src, d, u.data(), e, fixed::Update::Overwrite, p.data(), e);
    fixed::gemm(false, false, n, e, d, src, d, v.data(), e, fixed::Update::Overwrite, q.data(), e);
    for (int64_t i = 0; i < n; ++i) {
      while (blocks.end(block) <= r0 + i) ++block;
      double* z = acc.data() + block * e;
      const float* pi = p.data() + i * e;
      const float* qi = q.data() + i * e;
      for (int64_t k = 0; k < e; ++k) z[k] += static_cast<double>(pi[k]) * qi[k];
    }
  }
  const double sc = std::sqrt(static_cast<double>(e));
  for (int64_t i = 0; i < blocks.n_blocks * e; ++i) out[i] = static_cast<float>(sc * acc[i]);
}

}  // namespace ntkal
