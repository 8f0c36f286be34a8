#include "common.hpp"

#include <cmath>
#include <omp.h>

#include "blas.hpp"

namespace ntkal {

void check_offsets(const int64_t* offsets, int64_t n_blocks, int64_t n_rows, const std::string& where) {
  if (!offsets) {
    if (n_blocks != n_rows)
      throw InvalidArgument(where + ": without offsets there must be one block per row");
    return;
  }
  if (offsets[0] != 0)
    throw InvalidArgument(where + ": offsets must start at 0, got " + std::to_string(offsets[0]));
  for (int64_t i = 0; i < n_blocks; ++i) {
    if (offsets[i + 1] < offsets[i])
      throw InvalidArgument(where + ": offsets must be non-decreasing; offsets[" + std::to_string(i + 1) +
                            "] = " + std::to_string(offsets[i + 1]) + " < offsets[" + std::to_string(i) +
                            "] = " + std::to_string(offsets[i]));
  }
  if (offsets[n_blocks] != n_rows)
    throw InvalidArgument(where + ": offsets must end at the row count " + std::to_string(n_rows) + ", got " +
                          std::to_string(offsets[n_blocks]));
}

template <class T>
static bool all_finite_impl(const T* data, int64_t n) {
  int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) bad |= !std::isfinite(data[i]);
  return bad == 0;
}
bool all_finite(const float* data, int64_t n) { return all_finite_impl(data, n); }
bool all_finite(const double* data, int64_t n) { return all_finite_impl(data, n); }

void set_num_threads(int n) {
  if (n < 1) throw InvalidArgument("set_num_threads: n must be >= 1, got " + std::to_string(n));
  omp_set_num_threads(n);
  blas::set_num_threads(n);
}

int get_num_threads() { return omp_get_max_threads(); }

}  // namespace ntkal
