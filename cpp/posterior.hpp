// Bayesian linear model on sketched features: A = noise_var*I + c * sum_train Phi^T Phi (float64),
// L = chol(A). Posterior variance of a block = noise_var * c * ||L^{-1} Phi^T||_F^2 (Woodbury-exact
// kernel-space GP variance), computed chunk by chunk so memory stays O(chunk + d^2).
#pragma once
#include <cstdint>
#include <mutex>
#include <vector>

#include "common.hpp"
#include "options.hpp"

namespace ntkal {


// sum_r phi_r^T phi_r of float32 rows in float64 (lower triangle of out, dim x dim, zeroed first), with
// the engine's fixed-order syrk: the partial Gram of one feature chunk.
void training_gram(const float* rows, int64_t n_rows, int64_t dim, double* out);

class Posterior {
 public:
  Posterior(int64_t dim, double noise_var, bool scale, Precision precision);
  Posterior(const Posterior& other);

  // Condition on training rows (n_rows x dim); n_blocks only counts structures.
  void add(const float* rows, int64_t n_rows, int64_t n_blocks);
  // Condition on a precomputed partial Gram (dim x dim, row-major; the lower triangle is read), e.g. one
  // per feature chunk from training_gram(): chunk Grams summed in a fixed order give the same bits on
  // one process or on many.
  void add_gram(const double* gram, int64_t n_rows, int64_t n_blocks);
  // The accumulated sum Phi^T Phi (lower triangle, row-major dim x dim).
  const std::vector<double>& gram() const { return gram_; }
  // Trace PV per block (intensive: divided by the block's row count). out has blocks.n_blocks entries.
  void variance(const BlocksView& blocks, bool intensive, double* out) const;
  // Whitened rows psi_r = sqrt(c) L^{-1} phi_r in float64 (n x dim, row-major).
  void whiten(const float* rows, int64_t n, double* out) const;

  int64_t dim() const { return dim_; }
  double noise_var() const { return noise_var_; }
  bool scale() const { return scale_; }
  Precision precision() const { return precision_; }
  int64_t n_rows() const { return n_rows_; }
  int64_t n_blocks() const { return n_blocks_; }
  double feature_scale() const;  // c
  double jitter() const;         // diagonal jitter that the last factorisation needed (0 normally)
  std::vector<double> cholesky() const;  // L, row-major lower (dim x dim)
  // sqrt(c) L^{-1} (row-major lower, dim x dim): the whitening operator psi = M phi. The float32
  // scoring path and the CUDA backend both use this one matrix.
  std::vector<double> whitening_operator() const;

  static constexpr int64_t kChunkElems = int64_t(1) << 21;  // floats per scoring chunk (8 MB)

 private:
  void counted(int64_t n_rows, int64_t n_blocks);  // after the Gram grew: counts, trace, refactor later
  void factor_locked() const;
  void ensure_factor() const;

  int64_t dim_;
  double noise_var_;
  bool scale_;
  Precision precision_;
  int64_t n_rows_ = 0, n_blocks_ = 0;
  double trace_ = 0.0;       // sum of squared row norms of training rows
  std::vector<double> gram_;  // lower triangle of sum Phi^T Phi

  mutable std::mutex mutex_;
  mutable bool dirty_ = true;
  mutable double c_ = 1.0, jitter_ = 0.0;
  mutable std::vector<double> chol_;       // L
  mutable std::vector<double> whiten_op_;  // sqrt(c) L^{-1}
  mutable std::vector<float> inv_chol32_;  // the same in float32 (scoring GEMM operand)
};

}  // namespace ntkal
