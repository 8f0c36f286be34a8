// Greedy posterior-variance selection (block-aware). In whitened coordinates psi = sqrt(c) L^{-1} phi
// the posterior covariance of two rows is noise_var * psi_a^T C psi_b with C = I - V V^T. Selecting
// block B (whitened rows Psi_B, d x m) updates C <- C - V_B V_B^T with V_B = C Psi_B R^{-T},
// R R^T = I_m + Psi_B^T C Psi_B (Woodbury). A block's PV is noise_var * (||Psi||^2 - sum ||V^T psi_r||^2).
// Lazy, in batches: every block's first PV is an upper bound of its PV forever (conditioning never
// raises it). Blocks are whitened in batches in bound order, only while an inactive block's bound
// could still rank first; a max-heap holds the active blocks' values, stale ones are refreshed
// against the V rows added since, many at a time in one GEMM, until the top entry is fresh.
// Picks are those of plain greedy in float64 (ties: lower index), and a block's value does not
// depend on when it was refreshed: it sums the same per-pick terms in pick order.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>
#include <string>

#include "fixed_order.hpp"
#include "select.hpp"
#include "topk.hpp"

namespace ntkal {

namespace {
constexpr int64_t kActivation = 1024;  // blocks whitened per batch
constexpr int64_t kRefresh = 512;     // stale blocks refreshed per GEMM

// Whitened rows (float64, row-major) of the blocks touched so far, ||psi||^2 per block and the sum of
// squared projections onto the V rows of picks [0, stamp).
struct ActiveSet {
  std::vector<int64_t> block, row0, n_rows, stamp;  // per slot
  std::vector<double> base, projected;               // per slot
  std::vector<double> psi;                           // total_rows x d
  int64_t total_rows = 0;
  int64_t slots() const { return static_cast<int64_t>(block.size()); }
};

struct Entry {  // heap entry: a slot's value after `stamp` picks (an upper bound when stale)
  double value;
  int64_t block, slot, stamp;
};
struct HeapOrder {
  bool operator()(const Entry& a, const Entry& b) const { return ranks_before(b.value, b.block, a.value, a.block); }
};

}  // namespace

Selection select_greedy_pv(const Posterior& post, const BlocksView& cand, int64_t n) {
  const int64_t d = post.dim(), n_pool = cand.n_blocks;
  if (n < 0 || n > n_pool)
    throw InvalidArgument("select: n must be in [0, " + std::to_string(n_pool) + "], got " + std::to_string(n));
  Selection out;
  if (n == 0) return out;
  const double sigma2 = post.noise_var();

  // Upper bounds of every block's PV, now and after any conditioning (which never raises PV).
  std::vector<double> bound(static_cast<size_t>(n_pool));
  post.variance(cand, false, bound.data());
  if (post.precision() == Precision::Float32) {
    // float32 scores are not guaranteed upper bounds of the float64 values computed below:
    // widen them by far more than float32 whitening error so no block is left out wrongly.
    double top = 0.0;
    for (double v : bound) top = std::max(top, v);
    for (double& v : bound) v = v * (1.0 + 1e-3) + 1e-6 * top;
  }
  std::vector<int64_t> order(static_cast<size_t>(n_pool));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return ranks_before(bound[a], a, bound[b], b); });
  int64_t next = 0;  // order[next:] are not active yet

  ActiveSet act;
  std::priority_queue<Entry, std::vector<Entry>, HeapOrder> heap;
  std::vector<double> vrows;          // V^T rows of every pick, t x d
  std::vector<int64_t> pick_cols{0};  // pick k owns V rows [pick_cols[k], pick_cols[k + 1])
  std::vector<double> coef, gathered64;
  auto picks = [&] { return static_cast<int64_t>(pick_cols.size()) - 1; };
  auto value = [&](int64_t s) { return sigma2 * (act.base[s] - act.projected[s]); };

  // Bring slots up to date: projections onto the V rows of picks [stamp, picks()) in one GEMM
  // (rows: the slots' psi, gathered; columns: V rows from the oldest stamp on), then per-pick
  // sums added in pick order.
  auto refresh = [&](const std::vector<int64_t>& slots, const double* rows_psi, int64_t ld_rows) {
    const int64_t now = picks();
    int64_t oldest = now;
    for (int64_t s : slots) oldest = std::min(oldest, act.stamp[s]);
    if (oldest == now) return;
    const int64_t c0 = pick_cols[oldest], nc = pick_cols[now] - c0;
    int64_t rows = 0;
    for (int64_t s : slots) rows += act.n_rows[s];
    coef.resize(static_cast<size_t>(rows * nc));
    fixed::gemm(false, true, rows, nc, d, rows_psi, ld_rows, vrows.data() + c0 * d, d, fixed::Update::Overwrite,
                coef.data(), nc);
    int64_t r0 = 0;
    for (int64_t s : slots) {
      for (int64_t k = act.stamp[s]; k < now; ++k) {
        double sum = 0.0;
        for (int64_t r = r0; r < r0 + act.n_rows[s]; ++r)
          for (int64_t j = pick_cols[k] - c0; j < pick_cols[k + 1] - c0; ++j) sum += coef[r * nc + j] * coef[r * nc + j];
        act.projected[s] += sum;
      }
      act.stamp[s] = now;
      r0 += act.n_rows[s];
    }
  };
  // Whiten the next `count` blocks in bound order in one batch, bring them up to date, queue them.
  auto activate = [&](int64_t count) {
    const int64_t first_slot = act.slots();
    int64_t rows = 0;
    for (int64_t k = next; k < next + count; ++k) rows += cand.size(order[k]);
    std::vector<float> gathered(static_cast<size_t>(std::max<int64_t>(rows, 1) * d));
    int64_t r = 0;
    for (int64_t k = next; k < next + count; ++k) {
      const int64_t b = order[k], m = cand.size(b);
      std::copy(cand.rows.row(cand.begin(b)), cand.rows.row(cand.begin(b)) + m * d, gathered.data() + r * d);
      act.block.push_back(b);
      act.row0.push_back(act.total_rows + r);
      act.n_rows.push_back(m);
      act.stamp.push_back(0);
      act.projected.push_back(0.0);
      r += m;
    }
    next += count;
    act.psi.resize(static_cast<size_t>((act.total_rows + rows) * d));
    double* psi_new = act.psi.data() + act.total_rows * d;
    post.whiten(gathered.data(), rows, psi_new);
    act.total_rows += rows;
    std::vector<int64_t> slots(static_cast<size_t>(count));
    std::iota(slots.begin(), slots.end(), first_slot);
    for (int64_t s : slots) {
      double b2 = 0.0;
      for (int64_t i = act.row0[s] * d; i < (act.row0[s] + act.n_rows[s]) * d; ++i) b2 += act.psi[i] * act.psi[i];
      act.base.push_back(b2);
    }
    refresh(slots, psi_new, d);
    for (int64_t s : slots) heap.push({value(s), act.block[s], s, act.stamp[s]});
  };

  std::vector<int64_t> batch;
  while (static_cast<int64_t>(out.indices.size()) < n) {
    // an inactive block whose bound ranks first must be looked at before anything is picked
    if (next < n_pool &&
        (heap.empty() || !ranks_before(heap.top().value, heap.top().block, bound[order[next]], order[next]))) {
      activate(std::min(n_pool - next, kActivation));
      continue;
    }
    if (heap.top().stamp != picks()) {  // stale: refresh it and the stale entries right below it
      batch.clear();
      while (!heap.empty() && heap.top().stamp != picks() && static_cast<int64_t>(batch.size()) < kRefresh) {
        batch.push_back(heap.top().slot);
        heap.pop();
      }
      int64_t rows = 0;
      for (int64_t s : batch) rows += act.n_rows[s];
      gathered64.resize(static_cast<size_t>(std::max<int64_t>(rows, 1) * d));
      int64_t r = 0;
      for (int64_t s : batch) {
        std::copy(act.psi.begin() + act.row0[s] * d, act.psi.begin() + (act.row0[s] + act.n_rows[s]) * d,
                  gathered64.begin() + r * d);
        r += act.n_rows[s];
      }
      refresh(batch, gathered64.data(), d);
      for (int64_t s : batch) heap.push({value(s), act.block[s], s, act.stamp[s]});
      continue;
    }
    // the top entry is fresh and ranks before every upper bound left: it is the greedy pick
    const Entry top = heap.top();
    heap.pop();
    const int64_t b = top.block, m = act.n_rows[top.slot];
    out.indices.push_back(b);
    out.scores.push_back(top.value);
    if (static_cast<int64_t>(out.indices.size()) == n || m == 0) continue;
    const int64_t t = static_cast<int64_t>(vrows.size()) / d;
    const double* psi = act.psi.data() + act.row0[top.slot] * d;  // m x d (rows psi_r^T)
    // cpsi = C Psi_B as m x d rows: psi - (psi V) V^T
    std::vector<double> cpsi(psi, psi + m * d);
    if (t > 0) {
      std::vector<double> c(static_cast<size_t>(m * t));
      fixed::gemm(false, true, m, t, d, psi, d, vrows.data(), d, fixed::Update::Overwrite, c.data(), t);
      fixed::gemm(false, false, m, d, t, c.data(), t, vrows.data(), d, fixed::Update::Subtract, cpsi.data(), d);
    }
    // R R^T = I + Psi_B^T C Psi_B  (m x m)
    std::vector<double> rr(static_cast<size_t>(m * m));
    fixed::gemm(false, true, m, m, d, psi, d, cpsi.data(), d, fixed::Update::Overwrite, rr.data(), m);
    for (int64_t i = 0; i < m; ++i) rr[i * m + i] += 1.0;
    if (fixed::cholesky_lower(m, rr.data(), m) != 0)
      throw NumericalError("select(greedy_pv): block update lost positive definiteness");
    // V_B^T = R^{-1} (C Psi_B)^T, solved on the transposed layout: vb (d x m) <- cpsi^T R^{-T}
    std::vector<double> vb(static_cast<size_t>(d * m));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < d; ++j) vb[j * m + i] = cpsi[i * d + j];
    fixed::solve_lower_rows(d, m, rr.data(), m, vb.data(), m);
    vrows.resize(static_cast<size_t>((t + m) * d));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < d; ++j) vrows[(t + i) * d + j] = vb[j * m + i];
    pick_cols.push_back(t + m);
  }
  return out;
}

}  // namespace ntkal
