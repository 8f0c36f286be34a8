// Top-k by a stable descending radix sort of (value, index) pairs (CUB, header-only in the CUDA
// toolkit). Stability gives the CPU TopK's tie rule for free: equal values keep their input order,
// i.e. the lower index first. A full sort of 10^6 doubles takes about a millisecond, far below the
// scoring GEMM that produced them, so no selection network is needed.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

namespace ntkal::cuda {
namespace detail {

__global__ void iota_kernel(int64_t* __restrict__ out, int64_t n, int64_t base) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = base + i;
}

// +0.0 for -0.0: the CPU comparator treats them as equal (ties by index); the radix sort would not.
__global__ void canonical_zero_kernel(const double* __restrict__ in, double* __restrict__ out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = in[i] == 0.0 ? 0.0 : in[i];
}

}  // namespace detail

void top_k(const double* values, const int64_t* indices, int64_t n, int64_t base, int64_t k, double* out_values,
           int64_t* out_indices, void* stream) {
  using namespace detail;
  require(k >= 0 && k <= n, "shortlist: k must be in [0, " + std::to_string(n) + "], got " + std::to_string(k));
  require(n < (int64_t(1) << 31), "shortlist: at most 2^31 - 1 candidates per top-k call");
  if (k == 0) return;
  DeviceGuard guard(values);
  cudaStream_t s = as_stream(stream);
  Scratch<double> keys_in(n, s), keys_out(n, s);
  Scratch<int64_t> idx_in(indices ? 0 : n, s), idx_out(n, s);
  canonical_zero_kernel<<<grid_for(n, 256), 256, 0, s>>>(values, keys_in.get(), n);
  NTKAL_CUDA_LAUNCHED("canonical_zero_kernel");
  const int64_t* idx = indices;
  if (!idx) {
    iota_kernel<<<grid_for(n, 256), 256, 0, s>>>(idx_in.get(), n, base);
    NTKAL_CUDA_LAUNCHED("iota_kernel");
    idx = idx_in.get();
  }
  size_t temp_bytes = 0;
  NTKAL_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, temp_bytes, keys_in.get(), keys_out.get(), idx,
                                                             idx_out.get(), static_cast<int>(n), 0, 64, s));
  Scratch<unsigned char> temp(static_cast<int64_t>(temp_bytes), s);
  NTKAL_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(temp.get(), temp_bytes, keys_in.get(), keys_out.get(),
                                                             idx, idx_out.get(), static_cast<int>(n), 0, 64, s));
  NTKAL_CUDA_CHECK(cudaMemcpyAsync(out_values, keys_out.get(), sizeof(double) * k, cudaMemcpyDeviceToDevice, s));
  NTKAL_CUDA_CHECK(cudaMemcpyAsync(out_indices, idx_out.get(), sizeof(int64_t) * k, cudaMemcpyDeviceToDevice, s));
}

}  // namespace ntkal::cuda
