// Greedy posterior-variance selection (block-aware). In whitened coordinates psi = sqrt(c) L^{-1} phi
// the posterior covariance of two rows is noise_var * psi_a^T C psi_b with C = I - V V^T. Selecting
// block B (whitened rows Psi_B, d x m) updates C <- C - V_B V_B^T with V_B = C Psi_B R^{-T},
// R R^T = I_m + Psi_B^T C Psi_B (Woodbury). A block's PV is noise_var * sum_r (||psi_r||^2 - ||V^T psi_r||^2).
// Lazy evaluation: a max-heap of stale upper bounds; a popped block is refreshed against the V rows
// added since its last refresh and re-queued until the top entry is fresh.
#include <algorithm>
#include <cmath>
#include <queue>
#include <string>
#include <unordered_map>

#include "fixed_order.hpp"
#include "select.hpp"
#include "topk.hpp"

namespace ntkal {

namespace {
constexpr int64_t kWhitenBatch = 256;  // blocks whitened together on first touch

struct Entry {
  double bound;
  int64_t index;
  int64_t stamp;  // number of V rows already applied to `bound`; -1: never refreshed
};
struct HeapOrder {
  bool operator()(const Entry& a, const Entry& b) const {  // true when a ranks after b
    return ranks_before(b.bound, b.index, a.bound, a.index);
  }
};
}  // namespace

Selection select_greedy_pv(const Posterior& post, const BlocksView& cand, int64_t n, const double* initial_pv) {
  const int64_t d = post.dim(), n_pool = cand.n_blocks;
  if (n < 0 || n > n_pool)
    throw InvalidArgument("select: n must be in [0, " + std::to_string(n_pool) + "], got " + std::to_string(n));
  Selection out;
  if (n == 0) return out;
  const double sigma2 = post.noise_var();

  std::vector<double> pv0(static_cast<size_t>(n_pool));
  if (initial_pv)
    std::copy(initial_pv, initial_pv + n_pool, pv0.begin());
  else {
    post.variance(cand, false, pv0.data());
    if (post.precision() == Precision::Float32) {
      // float32 scores are not guaranteed upper bounds of the float64 values the refresh computes:
      // widen them by far more than float32 whitening error so laziness never skips the true pick.
      double top = 0.0;
      for (double v : pv0) top = std::max(top, v);
      for (double& v : pv0) v = v * (1.0 + 1e-3) + 1e-6 * top;
    }
  }
  std::priority_queue<Entry, std::vector<Entry>, HeapOrder> heap;
  for (int64_t i = 0; i < n_pool; ++i) heap.push({pv0[i], i, -1});

  std::unordered_map<int64_t, std::vector<double>> psi_cache;  // whitened rows of touched blocks
  std::unordered_map<int64_t, double> base_norm;              // sum ||psi_r||^2
  std::vector<double> vrows;                                   // V^T, t x d row-major
  int64_t t = 0;
  std::vector<double> proj;

  auto whitened = [&](int64_t b) -> const std::vector<double>& {
    auto it = psi_cache.find(b);
    if (it != psi_cache.end()) return it->second;
    const int64_t m = cand.size(b);
    std::vector<double> psi(static_cast<size_t>(m * d));
    post.whiten(cand.rows.row(cand.begin(b)), m, psi.data());
    double s = 0.0;
    for (double v : psi) s += v * v;
    base_norm[b] = s;
    return psi_cache.emplace(b, std::move(psi)).first->second;
  };
  auto whiten_batch = [&](const std::vector<int64_t>& batch) {
    int64_t rows = 0;
    for (int64_t c : batch) rows += cand.size(c);
    std::vector<float> gathered(static_cast<size_t>(rows * d));
    std::vector<double> psi_all(static_cast<size_t>(rows * d));
    int64_t r = 0;
    for (int64_t c : batch) {
      const int64_t m = cand.size(c);
      std::copy(cand.rows.row(cand.begin(c)), cand.rows.row(cand.begin(c)) + m * d, gathered.data() + r * d);
      r += m;
    }
    post.whiten(gathered.data(), rows, psi_all.data());
    r = 0;
    for (int64_t c : batch) {
      const int64_t m = cand.size(c);
      std::vector<double> psi(psi_all.begin() + r * d, psi_all.begin() + (r + m) * d);
      double s = 0.0;
      for (double v : psi) s += v * v;
      base_norm[c] = s;
      psi_cache.emplace(c, std::move(psi));
      r += m;
    }
  };
  // sum_r ||V[t0:t]^T psi_r||^2 for block b
  auto projected_norm = [&](int64_t b, int64_t t0) -> double {
    const int64_t m = cand.size(b), dt = t - t0;
    if (dt <= 0 || m == 0) return 0.0;
    const auto& psi = whitened(b);
    proj.resize(static_cast<size_t>(m * dt));
    fixed::gemm(false, true, m, dt, d, psi.data(), d, vrows.data() + t0 * d, d, fixed::Update::Overwrite, proj.data(), dt);
    double s = 0.0;
    for (double v : proj) s += v * v;
    return s;
  };
  std::unordered_map<int64_t, double> residual;  // ||psi||^2 - sum ||V^T psi||^2 so far (unscaled)

  while (static_cast<int64_t>(out.indices.size()) < n) {
    Entry top = heap.top();
    heap.pop();
    if (top.stamp != t) {
      // refresh: exact value against every V row added since the last refresh
      const int64_t b = top.index;
      if (top.stamp < 0) {
        // First touch: whiten this block and the next never-touched ones in one TRSM (BLAS-3),
        // since blocks near the top of the heap are usually all refreshed in turn.
        std::vector<int64_t> batch{b};
        while (!heap.empty() && heap.top().stamp < 0 && static_cast<int64_t>(batch.size()) < kWhitenBatch) {
          batch.push_back(heap.top().index);
          heap.pop();
        }
        whiten_batch(batch);
        for (int64_t c : batch) {
          residual[c] = base_norm[c] - projected_norm(c, 0);
          if (c != b) heap.push({sigma2 * residual[c], c, t});
        }
      } else {
        residual[b] -= projected_norm(b, top.stamp);
      }
      heap.push({sigma2 * residual[b], b, t});
      continue;
    }
    // top is fresh and ranks before every (upper-bound) entry left: it is the greedy pick
    const int64_t b = top.index, m = cand.size(b);
    out.indices.push_back(b);
    out.scores.push_back(top.bound);
    if (static_cast<int64_t>(out.indices.size()) == n || m == 0) continue;
    const auto& psi = whitened(b);  // m x d (rows psi_r^T)
    // cpsi = C Psi_B as m x d rows: psi - (psi V) V^T
    std::vector<double> cpsi(psi);
    if (t > 0) {
      std::vector<double> coef(static_cast<size_t>(m * t));
      fixed::gemm(false, true, m, t, d, psi.data(), d, vrows.data(), d, fixed::Update::Overwrite, coef.data(), t);
      fixed::gemm(false, false, m, d, t, coef.data(), t, vrows.data(), d, fixed::Update::Subtract, cpsi.data(), d);
    }
    // R R^T = I + Psi_B^T C Psi_B  (m x m)
    std::vector<double> r(static_cast<size_t>(m * m));
    fixed::gemm(false, true, m, m, d, psi.data(), d, cpsi.data(), d, fixed::Update::Overwrite, r.data(), m);
    for (int64_t i = 0; i < m; ++i) r[i * m + i] += 1.0;
    if (fixed::cholesky_lower(m, r.data(), m) != 0)
      throw NumericalError("select(greedy_pv): block update lost positive definiteness");
    // V_B^T = R^{-1} (C Psi_B)^T: in row form, rows of cpsi solved against R
    // (cpsi^T R^{-T})^T = R^{-1} cpsi, computed as trsm on the transposed layout.
    std::vector<double> vb(static_cast<size_t>(d * m));  // d x m = cpsi^T
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < d; ++j) vb[j * m + i] = cpsi[i * d + j];
    fixed::solve_lower_rows(d, m, r.data(), m, vb.data(), m);  // vb <- vb R^{-T}
    vrows.resize(static_cast<size_t>((t + m) * d));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < d; ++j) vrows[(t + i) * d + j] = vb[j * m + i];
    t += m;
    psi_cache.erase(b);
  }
  return out;
}

}  // namespace ntkal
