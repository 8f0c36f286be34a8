// Streaming top-k: feed score chunks, keep the k largest (ties: lower index first).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace ntkal {

class TopK {
 public:
  explicit TopK(int64_t k);
  // Offer values[i] for global index base + i.
  void push(const double* values, int64_t n, int64_t base);
  // The kept entries, best first.
  void result(std::vector<int64_t>& indices, std::vector<double>& values);

 private:
  void trim();
  int64_t k_;
  std::vector<std::pair<double, int64_t>> kept_;
};

// "a ranks before b": larger value first, lower index on ties.
inline bool ranks_before(double va, int64_t ia, double vb, int64_t ib) {
  return va > vb || (va == vb && ia < ib);
}

}  // namespace ntkal
