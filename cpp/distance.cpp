// LCMD and MaxDist selection with train points as initial centres.
// * Initialisation: blocked GEMM ||x||^2 + ||t||^2 - 2 x.t with a running min/argmin over train
//   tiles (never one pass per training point), then the exact squared distance to the winner in float64.
// * Each new centre only rescans clusters it can reach: a member c of cluster a (centre a, radius R_a)
//   can get strictly closer to the new centre x only if ||x - a|| < 2 R_a (triangle inequality).
// Semantics follow bmdal_reg: ties keep the earlier centre (strict <), argmax ties take the lowest index,
// LCMD picks the farthest unselected member of the cluster(s) with the largest sum of squared distances.
#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <string>
#include <vector>

#include "select.hpp"
#include "nearest_centre.hpp"
#include "topk.hpp"

namespace ntkal {

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define NTKAL_DOT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NTKAL_DOT_CLONES
#endif

namespace {

// x.y accumulated in float32 (16 lanes, vectorisable); only ever used with a rounding bound.
NTKAL_DOT_CLONES float dot_f32(const float* a, const float* b, int64_t e) {
  float s[16] = {0};
  int64_t k = 0;
  for (; k + 16 <= e; k += 16)
    for (int l = 0; l < 16; ++l) s[l] += a[k + l] * b[k + l];
  for (; k < e; ++k) s[k & 15] += a[k] * b[k];
  float t = 0.0f;
  for (int l = 0; l < 16; ++l) t += s[l];
  return t;
}

struct CentreState {
  const RowsView& x;
  const RowsView& tr;
  int64_t e;
  std::vector<double> min_d2;                 // per candidate
  std::vector<int64_t> owner;                 // per candidate: cluster id
  std::vector<std::vector<int64_t>> members;  // per cluster, ascending candidate index
  std::vector<double> sum, radius2;           // per cluster
  std::vector<int64_t> centre_of;             // per cluster: -1 - train index, or candidate index
  std::vector<char> selected;
  std::vector<double> xnorm2;                 // per candidate ||x||^2 (fixed order), for the prefilter

  CentreState(const RowsView& xv, const RowsView& tv)
      : x(xv), tr(tv), e(xv.dim), min_d2(xv.n_rows, std::numeric_limits<double>::infinity()),
        owner(xv.n_rows, -1), selected(xv.n_rows, 0) {}

  const float* centre_vec(int64_t cl) const {
    const int64_t c = centre_of[cl];
    return c < 0 ? tr.row(-1 - c) : x.row(c);
  }
  void refresh_cluster(int64_t cl) {
    double s = 0.0, r = 0.0;
    for (int64_t c : members[cl]) {
      s += min_d2[c];
      r = std::max(r, min_d2[c]);
    }
    sum[cl] = s;
    radius2[cl] = r;
  }
  void init_with_train(Precision precision) {
    const int64_t nx = x.n_rows, nt = tr.n_rows;
    nearest_train(x, tr, precision, owner);
    members.assign(static_cast<size_t>(nt), {});
    sum.assign(static_cast<size_t>(nt), 0.0);
    radius2.assign(static_cast<size_t>(nt), 0.0);
    centre_of.resize(static_cast<size_t>(nt));
    for (int64_t j = 0; j < nt; ++j) centre_of[j] = -1 - j;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nx; ++i) min_d2[i] = sqdist(x.row(i), tr.row(owner[i]), e);
    for (int64_t i = 0; i < nx; ++i) members[owner[i]].push_back(i);
    for (int64_t j = 0; j < nt; ++j) refresh_cluster(j);
  }
  // Make candidate s a centre; returns the candidates whose distance dropped.
  void add_centre(int64_t s, std::vector<int64_t>& changed) {
    changed.clear();
    const int64_t cl_new = static_cast<int64_t>(members.size());
    const int64_t n_old = cl_new;
    const float* xs = x.row(s);
    std::vector<char> scan(static_cast<size_t>(n_old), 0);
#pragma omp parallel for schedule(static) if (n_old > 256)
    for (int64_t a = 0; a < n_old; ++a) {
      if (members[a].empty()) continue;
      const double dist = std::sqrt(sqdist(xs, centre_vec(a), e));
      const double reach = 2.0 * std::sqrt(radius2[a]);
      // margin covers float64 rounding in the distances themselves
      scan[a] = dist <= reach * (1.0 + 1e-9) + 1e-300;
    }
    members.emplace_back();
    centre_of.push_back(s);
    sum.push_back(0.0);
    radius2.push_back(0.0);
    // Every member of every reachable cluster in one flat list, so the exact distances run in one
    // parallel loop (clusters are often small: 10^4 train centres for 10^5 candidates); the
    // updates below then walk the list in cluster order, as a sequential scan would.
    std::vector<int64_t> to_scan, flat, first{0};
    for (int64_t a = 0; a < n_old; ++a)
      if (scan[a]) {
        to_scan.push_back(a);
        flat.insert(flat.end(), members[a].begin(), members[a].end());
        first.push_back(static_cast<int64_t>(flat.size()));
      }
    // A float32 dot product decides who cannot get closer: ||x - s||^2 >= ||x||^2 + ||s||^2 - 2 fl(x.s)
    // - margin, with |fl(x.s) - x.s| <= gamma_e ||x|| ||s|| for any summation order. Only the others
    // get the exact float64 distance, which alone decides (the result is that of a full exact scan).
    if (xnorm2.empty()) {
      xnorm2.resize(static_cast<size_t>(x.n_rows));
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < x.n_rows; ++i) xnorm2[i] = sqnorm(x.row(i), e);
    }
    const double snorm2 = xnorm2[s], snorm = std::sqrt(snorm2);
    const double gamma = 1.01 * static_cast<double>(e) * 5.96e-8 / (1.0 - static_cast<double>(e) * 5.96e-8);
    std::vector<double> dist2(flat.size());
#pragma omp parallel for schedule(static) if (flat.size() > 256)
    for (int64_t k = 0; k < static_cast<int64_t>(flat.size()); ++k) {
      const int64_t c = flat[k];
      const double xn2 = xnorm2[c];
      const double lower = xn2 + snorm2 - 2.0 * dot_f32(xs, x.row(c), e) - 2.0 * gamma * std::sqrt(xn2) * snorm -
                           1e-12 * (xn2 + snorm2);
      dist2[k] = lower < min_d2[c] ? sqdist(xs, x.row(c), e) : std::numeric_limits<double>::infinity();
    }
    for (size_t t = 0; t < to_scan.size(); ++t) {
      const int64_t a = to_scan[t];
      auto& mem = members[a];
      const double* d2 = dist2.data() + first[t];
      size_t keep = 0;
      for (size_t k = 0; k < mem.size(); ++k) {
        const int64_t c = mem[k];
        if (d2[k] < min_d2[c]) {
          min_d2[c] = d2[k];
          owner[c] = cl_new;
          members[cl_new].push_back(c);
          changed.push_back(c);
        } else {
          mem[keep++] = c;
        }
      }
      mem.resize(keep);
      refresh_cluster(a);
    }
    std::sort(members[cl_new].begin(), members[cl_new].end());
    refresh_cluster(cl_new);
  }
};

}  // namespace

Selection select_by_distance(DistanceMethod method, const RowsView& x, const RowsView& tr, int64_t n,
                             Precision precision) {
  const int64_t nx = x.n_rows;
  if (n < 0 || n > nx) throw InvalidArgument("select: n must be in [0, " + std::to_string(nx) + "], got " + std::to_string(n));
  if (tr.n_rows > 0 && tr.dim != x.dim)
    throw InvalidArgument("select: train vectors have width " + std::to_string(tr.dim) + ", candidates " +
                          std::to_string(x.dim));
  Selection out;
  if (n == 0) return out;
  CentreState st(x, tr);
  std::vector<int64_t> changed;
  auto pick = [&](int64_t s, double score) {
    out.indices.push_back(s);
    out.scores.push_back(score);
    st.selected[s] = 1;
  };
  if (tr.n_rows > 0) {
    st.init_with_train(precision);
  } else {
    // cold start: the largest norm (bmdal_reg's rule), then everything is in its cluster
    std::vector<double> norms(static_cast<size_t>(nx));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nx; ++i) norms[i] = sqnorm(x.row(i), x.dim);
    int64_t s = 0;
    for (int64_t i = 1; i < nx; ++i)
      if (norms[i] > norms[s]) s = i;
    pick(s, norms[s]);
    st.centre_of.push_back(s);
    st.members.emplace_back();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nx; ++i) st.min_d2[i] = sqdist(x.row(s), x.row(i), x.dim);
    for (int64_t i = 0; i < nx; ++i) {
      st.owner[i] = 0;
      st.members[0].push_back(i);
    }
    st.sum.push_back(0.0);
    st.radius2.push_back(0.0);
    st.refresh_cluster(0);
  }

  // MaxDist: lazy max-heap over (min_d2, index); values only decrease, so stale entries are re-pushed.
  using Item = std::pair<double, int64_t>;
  auto after = [](const Item& a, const Item& b) { return ranks_before(b.first, b.second, a.first, a.second); };
  std::priority_queue<Item, std::vector<Item>, decltype(after)> heap(after);
  if (method == DistanceMethod::MaxDist)
    for (int64_t i = 0; i < nx; ++i)
      if (!st.selected[i]) heap.push({st.min_d2[i], i});

  while (static_cast<int64_t>(out.indices.size()) < n) {
    int64_t s = -1;
    if (method == DistanceMethod::MaxDist) {
      while (true) {
        Item top = heap.top();
        heap.pop();
        if (st.selected[top.second]) continue;
        if (top.first != st.min_d2[top.second]) {
          heap.push({st.min_d2[top.second], top.second});
          continue;
        }
        s = top.second;
        break;
      }
    } else {
      double best_sum = -1.0;
      for (double v : st.sum) best_sum = std::max(best_sum, v);
      double best = -std::numeric_limits<double>::infinity();
      for (size_t a = 0; a < st.sum.size(); ++a) {
        if (st.sum[a] != best_sum) continue;
        for (int64_t c : st.members[a])
          if (!st.selected[c] && ranks_before(st.min_d2[c], c, best, s)) {
            best = st.min_d2[c];
            s = c;
          }
      }
      if (s < 0) {  // every member of the largest clusters is already selected: take the farthest left
        for (int64_t c = 0; c < nx; ++c)
          if (!st.selected[c] && ranks_before(st.min_d2[c], c, best, s)) {
            best = st.min_d2[c];
            s = c;
          }
      }
    }
    pick(s, st.min_d2[s]);
    if (static_cast<int64_t>(out.indices.size()) == n) break;
    st.add_centre(s, changed);
    if (method == DistanceMethod::MaxDist)
      for (int64_t c : changed)
        if (!st.selected[c]) heap.push({st.min_d2[c], c});
  }
  return out;
}

}  // namespace ntkal
