// Per-block trace formulas of variance reduction and leave-one-out calibration on the fixed-order
// kernels. Each block is one m x m problem owned by one thread: its products, Cholesky factor,
// triangular inverse and trace are computed in one fixed sequence, so neither the thread split nor
// the kernel set nor the BLAS build changes a bit.
#include "block_traces.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "fixed_order.hpp"

namespace ntkal {

namespace {

void check_width(const Posterior& post, const BlocksView& blocks, const char* where) {
  if (blocks.rows.dim != post.dim())
    throw InvalidArgument(std::string(where) + ": rows must have the posterior's dim " + std::to_string(post.dim()) +
                          " columns, got " + std::to_string(blocks.rows.dim));
}

// Whitened rows psi = sqrt(c) L^{-1} phi of every block, float64 (n_rows x d).
std::vector<double> whitened(const Posterior& post, const BlocksView& blocks) {
  std::vector<double> w(static_cast<size_t>(blocks.rows.n_rows * post.dim()));
  if (blocks.rows.n_rows) post.whiten(blocks.rows.data, blocks.rows.n_rows, w.data());
  return w;
}

// s (m x m) = a b^T for m rows of a and b (leading dimension d)
void outer(int64_t m, int64_t d, const double* a, const double* b, double* s) {
  fixed::gemm(false, true, m, m, d, a, d, b, d, fixed::Update::Overwrite, s, m);
}

double sum_of_squares(const double* v, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += v[i] * v[i];
  return s;
}

}  // namespace

void variance_reduction_scores(const Posterior& post, const BlocksView& blocks, const double* target_gram,
                               const uint8_t* active, double* out) {
  check_width(post, blocks, "variance_reduction_scores");
  const int64_t d = post.dim(), n_rows = blocks.rows.n_rows;
  // N = op M op^T in whitened coordinates, then W N for every candidate row
  const std::vector<double> op = post.whitening_operator();
  std::vector<double> tmp(static_cast<size_t>(d * d)), target(static_cast<size_t>(d * d));
  fixed::gemm(false, false, d, d, d, op.data(), d, target_gram, d, fixed::Update::Overwrite, tmp.data(), d);
  fixed::gemm(false, true, d, d, d, tmp.data(), d, op.data(), d, fixed::Update::Overwrite, target.data(), d);
  const std::vector<double> w = whitened(post, blocks);
  std::vector<double> wn(static_cast<size_t>(n_rows * d));
  fixed::gemm(false, false, n_rows, d, d, w.data(), d, target.data(), d, fixed::Update::Overwrite, wn.data(), d);
  const double noise_var = post.noise_var();
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t b = 0; b < blocks.n_blocks; ++b) {
    const int64_t r0 = blocks.begin(b), m = blocks.size(b);
    if (!active[b] || m == 0) {
      out[b] = -std::numeric_limits<double>::infinity();
      continue;
    }
    const double* wb = w.data() + r0 * d;
    std::vector<double> s(static_cast<size_t>(m * m)), g(static_cast<size_t>(m * m)), sinv(s.size());
    outer(m, d, wb, wb, s.data());  // S = W W^T, then I + S
    for (int64_t i = 0; i < m; ++i) s[i * m + i] += 1.0;
    if (fixed::cholesky_lower(m, s.data(), m) != 0) {  // I + S >= I: only a non-finite entry gets here
      out[b] = std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    fixed::inverse_lower(m, s.data(), m);  // L^{-1}
    fixed::gemm(true, false, m, m, m, s.data(), m, s.data(), m, fixed::Update::Overwrite, sinv.data(), m);
    outer(m, d, wn.data() + r0 * d, wb, g.data());  // G = (W N) W^T
    double t = 0.0;  // tr(S^{-1} G), row by row
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < m; ++j) t += sinv[i * m + j] * g[j * m + i];
    out[b] = noise_var * t;
  }
}

void leave_one_out_variance(const Posterior& post, const BlocksView& blocks, bool intensive, double* out) {
  check_width(post, blocks, "leave_one_out_variance");
  const int64_t d = post.dim();
  const std::vector<double> w = whitened(post, blocks);
  const double noise_var = post.noise_var();
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t b = 0; b < blocks.n_blocks; ++b) {
    const int64_t r0 = blocks.begin(b), m = blocks.size(b);
    out[b] = std::numeric_limits<double>::quiet_NaN();
    if (m == 0) continue;
    const double* wb = w.data() + r0 * d;
    std::vector<double> s(static_cast<size_t>(m * m)), f(s.size()), y(static_cast<size_t>(m * d));
    outer(m, d, wb, wb, s.data());
    // I - S is positive definite in exact arithmetic (noise_var > 0). When rounding breaks that, the
    // block explains its own rows to within rounding: its value exceeds noise_var / 1e-16 and no
    // number computed here would be right (a jitter would only pick one), so it stays NaN
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < m; ++j) f[i * m + j] = (i == j ? 1.0 : 0.0) - s[i * m + j];
    if (fixed::cholesky_lower(m, f.data(), m) != 0) continue;
    // tr[S (I - S)^{-1}] = ||F^{-1} W||_F^2 with F F^T = I - S: a sum of squares, no cancellation
    fixed::inverse_lower(m, f.data(), m);
    fixed::gemm(false, false, m, d, m, f.data(), m, wb, d, fixed::Update::Overwrite, y.data(), d);
    out[b] = noise_var * sum_of_squares(y.data(), m * d);
    if (intensive) out[b] /= static_cast<double>(m);
  }
}

}  // namespace ntkal
