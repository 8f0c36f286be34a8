#include "posterior.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <string>

#include "fixed_order.hpp"

namespace ntkal {

Posterior::Posterior(int64_t dim, double noise_var, bool scale, Precision precision)
    : dim_(dim), noise_var_(noise_var), scale_(scale), precision_(precision) {
  if (dim <= 0) throw InvalidArgument("Posterior: dim must be > 0, got " + std::to_string(dim));
  if (!(noise_var > 0.0) || !std::isfinite(noise_var))
    throw InvalidArgument("Posterior: noise_var must be finite and > 0, got " + std::to_string(noise_var));
  // dim * dim must not overflow (2^40 wrapped to an empty Gram and was accepted), and the d x d
  // matrices must be allocatable: both are the caller's dim, so both are a bad argument
  constexpr int64_t kMaxDim = 3037000499;  // floor(sqrt(2^63 - 1))
  char need[32];
  std::snprintf(need, sizeof need, "%.3g", static_cast<double>(dim) * static_cast<double>(dim) * 8.0);
  if (dim > kMaxDim)
    throw InvalidArgument("Posterior: dim must be <= " + std::to_string(kMaxDim) + " (its d x d Gram needs " +
                          std::string(need) + " bytes), got " + std::to_string(dim));
  const std::string too_large = "Posterior: dim " + std::to_string(dim) + " needs " + std::string(need) +
                                " bytes for its d x d Gram, more than can be allocated";
  try {
    gram_.assign(static_cast<size_t>(dim * dim), 0.0);
  } catch (const std::bad_alloc&) {
    throw InvalidArgument(too_large);
  } catch (const std::length_error&) {
    throw InvalidArgument(too_large);
  }
}

Posterior::Posterior(const Posterior& o)
    : dim_(o.dim_), noise_var_(o.noise_var_), scale_(o.scale_), precision_(o.precision_) {
  std::lock_guard<std::mutex> lock(o.mutex_);
  n_rows_ = o.n_rows_;
  n_blocks_ = o.n_blocks_;
  trace_ = o.trace_;
  gram_ = o.gram_;
}

// gram (lower) += sum_r phi_r^T phi_r over float32 rows, widened to float64 a chunk at a time.
static void add_row_products(const float* rows, int64_t n_rows, int64_t dim, double* gram) {
  const int64_t chunk = std::max<int64_t>(1, Posterior::kChunkElems / dim);
  std::vector<double> buf(static_cast<size_t>(std::min(chunk, std::max<int64_t>(n_rows, 1)) * dim));
  for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
    const int64_t n = std::min(chunk, n_rows - r0);
    const float* src = rows + r0 * dim;
#pragma omp parallel for schedule(static) if (n * dim > 65536)
    for (int64_t i = 0; i < n * dim; ++i) buf[i] = src[i];
    fixed::syrk_lower_add(dim, n, buf.data(), dim, gram, dim);
  }
}

void Posterior::add(const float* rows, int64_t n_rows, int64_t n_blocks) {
  add_row_products(rows, n_rows, dim_, gram_.data());
  counted(n_rows, n_blocks);
}

void Posterior::counted(int64_t n_rows, int64_t n_blocks) {
  std::lock_guard<std::mutex> lock(mutex_);
  n_rows_ += n_rows;
  n_blocks_ += n_blocks;
  // trace from the Gram diagonal: no thread-count-dependent reduction order
  trace_ = 0.0;
  for (int64_t i = 0; i < dim_; ++i) trace_ += gram_[i * dim_ + i];
  dirty_ = true;
}

void training_gram(const float* rows, int64_t n_rows, int64_t dim, double* out) {
  std::fill(out, out + dim * dim, 0.0);
  add_row_products(rows, n_rows, dim, out);
}

void Posterior::add_gram(const double* gram, int64_t n_rows, int64_t n_blocks) {
  const int64_t d = dim_;
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j <= i; ++j) gram_[i * d + j] += gram[i * d + j];
  counted(n_rows, n_blocks);
}

void Posterior::factor_locked() const {
  const int64_t d = dim_;
  c_ = (scale_ && n_rows_ > 0 && trace_ > 0.0) ? static_cast<double>(n_rows_) / trace_ : 1.0;
  double mean_diag = noise_var_ + c_ * trace_ / static_cast<double>(d);
  chol_.assign(static_cast<size_t>(d * d), 0.0);
  // Bounded jitter retry: A is SPD in exact arithmetic (noise_var > 0); rounding can break that
  // only when noise_var is tiny relative to the Gram matrix.
  jitter_ = 0.0;
  for (int attempt = 0; attempt <= 6; ++attempt) {
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = 0; j <= i; ++j) chol_[i * d + j] = c_ * gram_[i * d + j];
      chol_[i * d + i] += noise_var_ + jitter_;
    }
    if (fixed::cholesky_lower(d, chol_.data(), d) == 0) break;
    if (attempt == 6)
      throw NumericalError("Posterior: Cholesky of A = noise_var*I + sum Phi^T Phi failed even with jitter " +
                           std::to_string(jitter_) + "; increase noise_var (now " + std::to_string(noise_var_) +
                           ") or check the training features");
    jitter_ = mean_diag * 1e-12 * std::pow(100.0, attempt);
  }
  whiten_op_ = chol_;
  fixed::inverse_lower(d, whiten_op_.data(), d);
  const double sc = std::sqrt(c_);
  inv_chol32_.resize(static_cast<size_t>(d * d));
  for (int64_t i = 0; i < d * d; ++i) {
    whiten_op_[i] *= sc;
    inv_chol32_[i] = static_cast<float>(whiten_op_[i]);
  }
  dirty_ = false;
}

void Posterior::ensure_factor() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (dirty_) factor_locked();
}

double Posterior::feature_scale() const {
  ensure_factor();
  return c_;
}

double Posterior::jitter() const {
  ensure_factor();
  return jitter_;
}

std::vector<double> Posterior::cholesky() const {
  ensure_factor();
  return chol_;
}

std::vector<double> Posterior::whitening_operator() const {
  ensure_factor();
  return whiten_op_;
}

void Posterior::whiten(const float* rows, int64_t n, double* out) const {
  ensure_factor();
  const int64_t d = dim_;
  for (int64_t i = 0; i < n * d; ++i) out[i] = rows[i];
  fixed::solve_lower_rows(n, d, chol_.data(), d, out, d);  // rows <- rows L^{-T}
  const double sc = std::sqrt(c_);
  if (sc != 1.0)
    for (int64_t i = 0; i < n * d; ++i) out[i] *= sc;
}

void Posterior::variance(const BlocksView& blocks, bool intensive, double* out) const {
  ensure_factor();
  const int64_t d = dim_, n_rows = blocks.rows.n_rows;
  std::fill(out, out + blocks.n_blocks, 0.0);
  if (n_rows == 0) return;
  const int64_t chunk = std::max<int64_t>(1, kChunkElems / d);
  const int64_t buf_rows = std::min(chunk, n_rows);
  std::vector<double> w64;
  if (precision_ == Precision::Float64) w64.resize(static_cast<size_t>(buf_rows * d));
  std::vector<double> norms(static_cast<size_t>(buf_rows));
  int64_t block = 0;  // first block that may own row r0
  for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
    const int64_t n = std::min(chunk, n_rows - r0);
    const float* src = blocks.rows.data + r0 * d;
    if (precision_ == Precision::Float32) {
      // ||Phi (sqrt(c) L^{-1})^T||^2 per row: the one GEMM that dominates scoring, fused with the norms
      fixed::row_sqnorms(n, d, d, src, d, inv_chol32_.data(), d, norms.data());
    } else {
      whiten(src, n, w64.data());
#pragma omp parallel for schedule(static) if (n * d > 65536)
      for (int64_t i = 0; i < n; ++i) {
        const double* w = w64.data() + i * d;
        double s = 0.0;
        for (int64_t j = 0; j < d; ++j) s += w[j] * w[j];
        norms[i] = s;
      }
    }
    // Per-block sums: blocks are contiguous row ranges, so walk them in order.
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = r0 + i;
      while (blocks.end(block) <= r) ++block;
      out[block] += norms[i];
    }
  }
  for (int64_t b = 0; b < blocks.n_blocks; ++b) {
    out[b] *= noise_var_;
    if (intensive && blocks.size(b) > 0) out[b] /= static_cast<double>(blocks.size(b));
  }
}

}  // namespace ntkal
