#include "topk.hpp"

#include <algorithm>
#include <string>

#include "common.hpp"

namespace ntkal {

static bool before(const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
  return ranks_before(a.first, a.second, b.first, b.second);
}

TopK::TopK(int64_t k) : k_(k) {
  if (k < 0) throw InvalidArgument("shortlist: k must be >= 0, got " + std::to_string(k));
  kept_.reserve(static_cast<size_t>(std::min<int64_t>(2 * k + 1, int64_t(1) << 24)));
}

void TopK::trim() {
  if (static_cast<int64_t>(kept_.size()) <= k_) return;
  std::nth_element(kept_.begin(), kept_.begin() + k_, kept_.end(), before);
  kept_.resize(static_cast<size_t>(k_));
}

void TopK::push(const double* values, int64_t n, int64_t base) {
  if (k_ == 0) return;
  for (int64_t i = 0; i < n; ++i) {
    kept_.emplace_back(values[i], base + i);
    // Amortised: trim only when twice the budget is buffered.
    if (static_cast<int64_t>(kept_.size()) >= 2 * k_ + 1024) trim();
  }
}

void TopK::result(std::vector<int64_t>& indices, std::vector<double>& values) {
  trim();
  std::sort(kept_.begin(), kept_.end(), before);
  indices.resize(kept_.size());
  values.resize(kept_.size());
  for (size_t i = 0; i < kept_.size(); ++i) {
    values[i] = kept_[i].first;
    indices[i] = kept_[i].second;
  }
}

}  // namespace ntkal
