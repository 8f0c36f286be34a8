// Gaussian sketch tiles on the device, entry for entry the CPU's (sketch.cpp gaussian_tile):
// S[p][j] = N(0, 1) / sqrt(dim) from philox::gaussian4 in float64, rounded once to T.
#pragma once
#include <cstdint>

#include "philox.hpp"

namespace ntkal::cuda::detail {

// tile (n_p x dim, ld) = S[p0 : p0 + n_p, :]; one thread per (parameter, group of 4 columns).
template <class T>
__global__ void gaussian_tile_kernel(uint64_t seed, int64_t p0, int64_t n_p, int64_t dim, T* __restrict__ tile,
                                     int64_t ld) {
  const int64_t quads = (dim + 3) / 4;
  const double scale = 1.0 / sqrt(static_cast<double>(dim));
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n_p * quads;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / quads, q = idx % quads;
    double z[4];
    philox::gaussian4(seed, static_cast<uint64_t>(p0 + r), static_cast<uint32_t>(q), z);
    T* row = tile + r * ld;
#pragma unroll
    for (int c = 0; c < 4; ++c)
      if (q * 4 + c < dim) row[q * 4 + c] = static_cast<T>(z[c] * scale);
  }
}

}  // namespace ntkal::cuda::detail
