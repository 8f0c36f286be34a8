// Train-centre initialisation: for every candidate, the nearest training vector.
// Two exact routes, both deciding the winner on float64 distances:
// * brute force: blocked GEMM ||t||^2 - 2 x.t over train tiles with a running min (never one pass
//   per training point), keeping every index within a rounding bound of the best;
// * projected bounds (float32, when the training features' spectrum decays, as NTK features do):
//   with an orthonormal basis B of the top principal directions and residual norms r,
//   ||B(x-t)||^2 + (r_x - r_t)^2 <= ||x-t||^2 <= ||B(x-t)||^2 + (r_x + r_t)^2, so a k-dim GEMM
//   shortlists the few train vectors that can still be nearest, and only those are measured exactly.
#include "nearest_centre.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "blas.hpp"
#include "fixed_order.hpp"

namespace ntkal {

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define NTKAL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NTKAL_CLONES
#endif

NTKAL_CLONES double sqdist(const float* a, const float* b, int64_t e) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= e; k += 8)
    for (int l = 0; l < 8; ++l) {
      const double diff = static_cast<double>(a[k + l]) - static_cast<double>(b[k + l]);
      s[l] += diff * diff;
    }
  for (; k < e; ++k) {
    const double diff = static_cast<double>(a[k]) - static_cast<double>(b[k]);
    s[k & 7] += diff * diff;
  }
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

NTKAL_CLONES double sqnorm(const float* a, int64_t e) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= e; k += 8)
    for (int l = 0; l < 8; ++l) s[l] += static_cast<double>(a[k + l]) * a[k + l];
  for (; k < e; ++k) s[k & 7] += static_cast<double>(a[k]) * a[k];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

namespace {

constexpr int64_t kPoolTile = 2048, kTrainTile = 2048;  // 16 MB float32 GEMM tile

std::vector<double> train_mean(const RowsView& tr) {
  const int64_t e = tr.dim, nt = tr.n_rows;
  std::vector<double> mean(static_cast<size_t>(e), 0.0);
  for (int64_t j = 0; j < nt; ++j)
    for (int64_t k = 0; k < e; ++k) mean[k] += tr.row(j)[k];
  for (double& m : mean) m /= static_cast<double>(nt);
  return mean;
}

// Exact winner among candidate train indices (float64 distances, ties: lowest index).
int64_t exact_argmin(const float* xi, const RowsView& tr, const int64_t* cand, size_t n_cand) {
  double bd = std::numeric_limits<double>::infinity();
  int64_t arg = -1;
  for (size_t c = 0; c < n_cand; ++c) {
    const int64_t j = cand[c];
    const double dd = sqdist(xi, tr.row(j), tr.dim);
    if (dd < bd || (dd == bd && j < arg)) {
      bd = dd;
      arg = j;
    }
  }
  return arg;
}

// Nearest train vector of every candidate: blocked GEMM with running min/argmin. Both sides are
// centred on the train mean first: distances are translation-invariant, and ||t||^2 - 2 x.t in
// float32 would otherwise lose the small differences between features that share a large offset.
template <class T>
void nearest_brute(const RowsView& x, const RowsView& tr, std::vector<int64_t>& owner) {
  const int64_t e = x.dim, nx = x.n_rows, nt = tr.n_rows;
  const std::vector<double> mean = train_mean(tr);
  std::vector<T> tc(static_cast<size_t>(nt * e));  // centred train
  std::vector<double> tnorm(static_cast<size_t>(nt));
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < nt; ++j) {
    double s = 0.0;
    for (int64_t k = 0; k < e; ++k) {
      const T v = static_cast<T>(tr.row(j)[k] - mean[k]);
      tc[j * e + k] = v;
      s += static_cast<double>(v) * v;
    }
    tnorm[j] = s;
  }
  std::vector<T> xc(static_cast<size_t>(std::min(kPoolTile, nx) * e));
  std::vector<T> g(static_cast<size_t>(std::min(kPoolTile, nx) * std::min(kTrainTile, nt)));
  // Rounding in the GEMM form can reorder near-equal distances, so every train index within a
  // rounding bound of the running best is kept and the winner is decided on exact float64 distances
  // (ties: lowest index, like a sequential scan with strict <).
  const double eps = std::is_same_v<T, float> ? 5.96e-8 : 1.12e-16;
  const double tmax = nt ? *std::max_element(tnorm.begin(), tnorm.end()) : 0.0;
  std::vector<double> best(static_cast<size_t>(kPoolTile)), tol(static_cast<size_t>(kPoolTile));
  std::vector<std::vector<int64_t>> near(static_cast<size_t>(kPoolTile));
  for (int64_t i0 = 0; i0 < nx; i0 += kPoolTile) {
    const int64_t ni = std::min(kPoolTile, nx - i0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < ni; ++i) {
      double xn = 0.0;
      for (int64_t k = 0; k < e; ++k) {
        const T v = static_cast<T>(x.row(i0 + i)[k] - mean[k]);
        xc[i * e + k] = v;
        xn += static_cast<double>(v) * v;
      }
      tol[i] = 8.0 * (e + 2) * eps * (xn + tmax) + 1e-300;
      best[i] = std::numeric_limits<double>::infinity();
      near[i].clear();
    }
    for (int64_t j0 = 0; j0 < nt; j0 += kTrainTile) {
      const int64_t nj = std::min(kTrainTile, nt - j0);
      fixed::gemm(false, true, ni, nj, e, xc.data(), e, tc.data() + j0 * e, e, fixed::Update::Overwrite, g.data(),
                  nj);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < ni; ++i) {
        // ||x||^2 is constant per row: compare ||t||^2 - 2 x.t
        const T* gi = g.data() + i * nj;
        double b = best[i];
        const double t_i = tol[i];
        auto& nr = near[i];
        for (int64_t j = 0; j < nj; ++j) {
          const double v = tnorm[j0 + j] - 2.0 * static_cast<double>(gi[j]);
          if (v <= b + t_i) {
            if (v < b - t_i) nr.clear();
            nr.push_back(j0 + j);
            if (v < b) b = v;
          }
        }
        best[i] = b;
      }
    }
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = 0; i < ni; ++i) {
      owner[i0 + i] = exact_argmin(x.row(i0 + i), tr, near[i].data(), near[i].size());
    }
  }
}

// Projected-bounds route; returns false (and does nothing) when the spectrum is too flat for the
// bounds to prune, in which case brute force is cheaper.
bool nearest_projected(const RowsView& x, const RowsView& tr, std::vector<int64_t>& owner) {
  const int64_t e = x.dim, nx = x.n_rows, nt = tr.n_rows;
  const int64_t k = std::min<int64_t>(32, e / 4);
  if (nt < 1024 || e < 128) return false;
  const std::vector<double> mean = train_mean(tr);
  // Principal directions of the centred training vectors (float64 e x e eigenproblem).
  std::vector<double> cov(static_cast<size_t>(e * e), 0.0), buf;
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 20) / e);
  for (int64_t j0 = 0; j0 < nt; j0 += chunk) {
    const int64_t nj = std::min(chunk, nt - j0);
    buf.resize(static_cast<size_t>(nj * e));
    for (int64_t j = 0; j < nj; ++j)
      for (int64_t c = 0; c < e; ++c) buf[j * e + c] = tr.row(j0 + j)[c] - mean[c];
    fixed::syrk_lower_add(e, nj, buf.data(), e, cov.data(), e);
  }
  std::vector<double> w(static_cast<size_t>(e));
  if (blas::syev(e, cov.data(), e, w.data()) != 0) return false;
  double total = 0.0, top = 0.0;
  for (int64_t i = 0; i < e; ++i) total += std::max(w[i], 0.0);
  for (int64_t i = e - k; i < e; ++i) top += std::max(w[i], 0.0);
  if (!(total > 0.0) || top < 0.9 * total) return false;  // flat spectrum: bounds would not prune
  // basis rows: the k leading eigenvectors (last rows of cov), float64
  const double* basis = cov.data() + (e - k) * e;

  // Project centred vectors in float64: p = (v - mean) B^T, r^2 = ||v - mean||^2 - ||p||^2.
  auto project = [&](const RowsView& v, int64_t i0, int64_t n, std::vector<float>& p, std::vector<double>& pn,
                     std::vector<double>& r, std::vector<double>& scratch) {
    scratch.resize(static_cast<size_t>(n * e));
    std::vector<double> pd(static_cast<size_t>(n * k));
    std::vector<double> vn(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      double s = 0.0;
      for (int64_t c = 0; c < e; ++c) {
        const double d = v.row(i0 + i)[c] - mean[c];
        scratch[i * e + c] = d;
        s += d * d;
      }
      vn[i] = s;
    }
    fixed::gemm(false, true, n, k, e, scratch.data(), e, basis, e, fixed::Update::Overwrite, pd.data(), k);
    p.resize(static_cast<size_t>(n * k));
    pn.resize(static_cast<size_t>(n));
    r.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      double s = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        p[i * k + c] = static_cast<float>(pd[i * k + c]);
        s += pd[i * k + c] * pd[i * k + c];
      }
      pn[i] = s;
      r[i] = std::sqrt(std::max(vn[i] - s, 0.0));
    }
  };
  std::vector<float> pt, px;
  std::vector<double> ptn, rt, pxn, rx, scratch;
  {  // train in pool-tile-sized chunks keeps the float64 scratch small
    std::vector<float> p;
    std::vector<double> pn, r;
    for (int64_t j0 = 0; j0 < nt; j0 += kPoolTile) {
      project(tr, j0, std::min(kPoolTile, nt - j0), p, pn, r, scratch);
      pt.insert(pt.end(), p.begin(), p.end());
      ptn.insert(ptn.end(), pn.begin(), pn.end());
      rt.insert(rt.end(), r.begin(), r.end());
    }
  }
  const double ptn_max = *std::max_element(ptn.begin(), ptn.end());
  const double tn_max = [&] {
    double m = 0.0;
    for (int64_t j = 0; j < nt; ++j) m = std::max(m, ptn[j] + rt[j] * rt[j]);
    return m;
  }();

  std::vector<float> g(static_cast<size_t>(std::min(kPoolTile, nx) * std::min(kTrainTile, nt)));
  struct Cand {
    float lb;
    int64_t j;
  };
  std::vector<std::vector<Cand>> cands(static_cast<size_t>(kPoolTile));
  std::vector<double> upper(static_cast<size_t>(kPoolTile)), margin(static_cast<size_t>(kPoolTile));
  for (int64_t i0 = 0; i0 < nx; i0 += kPoolTile) {
    const int64_t ni = std::min(kPoolTile, nx - i0);
    project(x, i0, ni, px, pxn, rx, scratch);
    for (int64_t i = 0; i < ni; ++i) {
      // float32 k-dim GEMM rounding (generous), plus float64 residual rounding
      margin[i] = 16.0 * (k + 2) * 5.96e-8 * (pxn[i] + ptn_max) + 1e-12 * (pxn[i] + rx[i] * rx[i] + tn_max);
      upper[i] = std::numeric_limits<double>::infinity();
      cands[i].clear();
    }
    for (int64_t j0 = 0; j0 < nt; j0 += kTrainTile) {
      const int64_t nj = std::min(kTrainTile, nt - j0);
      fixed::gemm(false, true, ni, nj, k, px.data(), k, pt.data() + j0 * k, k, fixed::Update::Overwrite, g.data(),
                  nj);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < ni; ++i) {
        const float* gi = g.data() + i * nj;
        double u = upper[i];
        const double m = margin[i], xr = rx[i], xp = pxn[i];
        auto& cl = cands[i];
        for (int64_t j = 0; j < nj; ++j) {
          const double pp = std::max(xp + ptn[j0 + j] - 2.0 * static_cast<double>(gi[j]), 0.0);
          const double dr = xr - rt[j0 + j], sr = xr + rt[j0 + j];
          const double lb = pp + dr * dr - m;
          if (lb > u) continue;
          cl.push_back({static_cast<float>(lb), j0 + j});
          u = std::min(u, pp + sr * sr + m);
          if (cl.size() >= 256) {  // drop candidates the tighter upper bound has ruled out
            size_t keep = 0;
            for (const Cand& c : cl)
              if (c.lb <= u) cl[keep++] = c;
            cl.resize(keep);
          }
        }
        upper[i] = u;
      }
    }
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = 0; i < ni; ++i) {
      std::vector<int64_t> js;
      for (const Cand& c : cands[i])
        if (c.lb <= upper[i]) js.push_back(c.j);
      owner[i0 + i] = exact_argmin(x.row(i0 + i), tr, js.data(), js.size());
    }
  }
  return true;
}

}  // namespace

bool nearest_train(const RowsView& x, const RowsView& tr, Precision precision, std::vector<int64_t>& owner) {
  if (precision == Precision::Float32) {
    if (nearest_projected(x, tr, owner)) return true;
    nearest_brute<float>(x, tr, owner);
  } else {
    nearest_brute<double>(x, tr, owner);
  }
  return false;
}

}  // namespace ntkal
