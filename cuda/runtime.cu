// Runtime queries. None of these may fail on a machine without a driver: the static CUDA runtime
// reports cudaErrorNoDevice / cudaErrorInsufficientDriver, which become "0 devices".
#include <string>
#include <vector>

#include "common.cuh"

namespace ntkal::cuda {

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::vector<std::string> device_names() noexcept {
  std::vector<std::string> names;
  try {
    const int n = device_count();
    for (int i = 0; i < n; ++i) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      names.push_back(std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
                      ")");
    }
  } catch (...) {
    names.clear();
  }
  return names;
}

int runtime_version() noexcept { return CUDART_VERSION; }

void synchronize(void* stream) { NTKAL_CUDA_CHECK(cudaStreamSynchronize(detail::as_stream(stream))); }

int64_t scratch_peak_bytes(int device, bool reset) {
  cudaMemPool_t pool;
  NTKAL_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  unsigned long long high = 0;
  NTKAL_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high));
  if (reset) {
    unsigned long long zero = 0;  // resets the high-water mark to the current use
    NTKAL_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  }
  return static_cast<int64_t>(high);
}

}  // namespace ntkal::cuda
