// Batch selection on candidate blocks. Every method returns the chosen block indices in the order
// chosen and a score per pick (PV at selection time, or squared distance to the nearest centre).
#pragma once
#include <cstdint>
#include <vector>

#include "common.hpp"
#include "posterior.hpp"

namespace ntkal {

struct Selection {
  std::vector<int64_t> indices;
  std::vector<double> scores;
};

// Greedy posterior variance with block-aware Woodbury updates: identical picks to plain greedy
// in float64 (ties: lower index), computed lazily over blocks (see greedy_pv.cpp).
Selection select_greedy_pv(const Posterior& posterior, const BlocksView& candidates, int64_t n);

// Distance-based methods on one vector per structure (candidates: n_pool x e, train: n_train x e).
// lcmd: largest cluster (sum of squared distances) -> farthest member; maxdist: farthest candidate.
// Train vectors are the initial centres; without them the first pick is the largest norm.
Selection select_by_distance(DistanceMethod method, const RowsView& candidates, const RowsView& train, int64_t n,
                             Precision precision);

// One vector per structure for distances: z_k = (1/sqrt(e)) sum_rows (phi_r . u_k)(phi_r . v_k),
// u_k, v_k standard normal from the Gaussian sketch stream, so <z(x), z(x')> ~ ||Phi(x) Phi(x')^T||_F^2.
void gram_sketch(const BlocksView& blocks, int64_t out_dim, uint64_t seed, float* out);

}  // namespace ntkal
