// Nearest training vector of every candidate (the train-centre initialisation of LCMD/MaxDist).
#pragma once
#include <cstdint>
#include <vector>

#include "common.hpp"
#include "posterior.hpp"

namespace ntkal {

inline double sqdist(const float* a, const float* b, int64_t e) {
  double s = 0.0;
  for (int64_t k = 0; k < e; ++k) {
    const double diff = static_cast<double>(a[k]) - static_cast<double>(b[k]);
    s += diff * diff;
  }
  return s;
}

inline double sqnorm(const float* a, int64_t e) {
  double s = 0.0;
  for (int64_t k = 0; k < e; ++k) s += static_cast<double>(a[k]) * a[k];
  return s;
}

// owner[i] = argmin_j ||x_i - t_j||^2 (exact float64 comparison, ties: lowest j).
void nearest_train(const RowsView& x, const RowsView& tr, Precision precision, std::vector<int64_t>& owner);

}  // namespace ntkal
