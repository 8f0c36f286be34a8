// Nearest training vector of every candidate (the train-centre initialisation of LCMD/MaxDist).
#pragma once
#include <cstdint>
#include <vector>

#include "common.hpp"
#include "posterior.hpp"

namespace ntkal {

// Squared distance / norm accumulated in float64. Eight partial sums in a fixed order let the
// compiler vectorise without reassociation flags, and the result does not depend on the ISA clone.
double sqdist(const float* a, const float* b, int64_t e);
double sqnorm(const float* a, int64_t e);

// owner[i] = argmin_j ||x_i - t_j||^2 (exact float64 comparison, ties: lowest j). Returns true when the
// projected-bounds route decided it (float32, >= 1024 train vectors of dim >= 128, decaying spectrum),
// false for brute force; both give the same owners.
bool nearest_train(const RowsView& x, const RowsView& tr, Precision precision, std::vector<int64_t>& owner);

}  // namespace ntkal
