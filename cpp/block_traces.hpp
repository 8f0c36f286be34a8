// Trace formulas on each block's small m x m system in whitened coordinates (w = sqrt(c) L^{-1} phi,
// S = W W^T for the block's whitened rows W, m x d): the integrated-variance reduction of variance
// reduction and the leave-one-out PV of calibration. Every product, factorisation and sum runs on
// the fixed-order kernels (fixed_order.hpp) in a fixed order, so the results do not depend on the
// BLAS core type, the instruction set or the thread count.
#pragma once
#include <cstdint>

#include "common.hpp"
#include "posterior.hpp"

namespace ntkal {

// out[b] = noise_var * tr[(I + S_b)^{-1} W_b N W_b^T] for every active block (active[b] != 0 and
// at least one row), -inf otherwise; N = op M op^T, op = sqrt(c) L^{-1}, M the target Gram
// (d x d, symmetric, row-major). The drop of the integrated variance noise_var c tr(A^{-1} M)
// when the posterior conditions on block b.
void variance_reduction_scores(const Posterior& post, const BlocksView& blocks, const double* target_gram,
                               const uint8_t* active, double* out);

// out[b] = noise_var * tr[S_b (I - S_b)^{-1}] (divided by the block's row count when intensive):
// block b's PV under the posterior without it. NaN for an empty block, or when I - S_b is not
// positive definite in float64 (the block alone explains its own rows to within rounding: its
// leave-one-out PV is too large to resolve).
void leave_one_out_variance(const Posterior& post, const BlocksView& blocks, bool intensive, double* out);

}  // namespace ntkal
