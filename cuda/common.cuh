// Internal helpers of the CUDA backend (device code and host glue). Not installed, not included by
// the bindings: ntkal_cuda.hpp is the public face.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "common.hpp"  // ntkal::InvalidArgument (header-only part of the engine)
#include "ntkal_cuda.hpp"

namespace ntkal::cuda::detail {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a sticky-free error so the next call starts clean
    throw CudaError(std::string("ntkal CUDA backend: ") + what + " failed: " + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ")");
  }
}
#define NTKAL_CUDA_CHECK(expr) ::ntkal::cuda::detail::check((expr), #expr)

// NTKAL_CUDA_SYNC=1 in the environment: wait for every kernel right after its launch, so an
// asynchronous fault is reported by the kernel that caused it (debugging; slow).
inline bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("NTKAL_CUDA_SYNC");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}
inline void launched(const char* name) {
  check(cudaGetLastError(), name);
  if (sync_after_launch()) check(cudaDeviceSynchronize(), name);
}
#define NTKAL_CUDA_LAUNCHED(name) ::ntkal::cuda::detail::launched("launch of " name)

// Stream-ordered allocation where the device supports memory pools (cudaMallocAsync), plain
// cudaMalloc/cudaFree elsewhere (some virtualised and older devices report no pool support).
inline bool pools_supported() {
  int device = 0, supported = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return supported != 0;
}
inline void device_alloc(void** p, size_t bytes, cudaStream_t s) {
  if (pools_supported())
    check(cudaMallocAsync(p, bytes, s), "cudaMallocAsync");
  else
    check(cudaMalloc(p, bytes), "cudaMalloc");
}
// Never throws (used by destructors); a failure leaves the sticky error cleared.
inline void device_free(void* p, cudaStream_t s) noexcept {
  if (!p) return;
  const cudaError_t e = pools_supported() ? cudaFreeAsync(p, s) : cudaFree(p);
  if (e != cudaSuccess) cudaGetLastError();
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

inline void require(bool ok, const std::string& message) {
  if (!ok) throw InvalidArgument(message);
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Makes the device that owns `ptr` current for the guard's lifetime, then restores the previous
// device. Host pointers (or nullptr) leave the current device alone.
class DeviceGuard {
 public:
  explicit DeviceGuard(const void* ptr) {
    NTKAL_CUDA_CHECK(cudaGetDevice(&previous_));
    if (!ptr) return;
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) {
      if (attr.device != previous_) {
        NTKAL_CUDA_CHECK(cudaSetDevice(attr.device));
        switched_ = true;
      }
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Scratch memory from the stream-ordered allocator: allocation and release are ordered on the
// stream, so no host synchronisation is needed and kernels already queued keep their memory.
template <class T>
class Scratch {
 public:
  Scratch() = default;
  Scratch(int64_t n, cudaStream_t s) { reset(n, s); }
  ~Scratch() { release(); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void reset(int64_t n, cudaStream_t s) {
    release();
    stream_ = s;
    size_ = n;
    if (n > 0) device_alloc(reinterpret_cast<void**>(&p_), sizeof(T) * static_cast<size_t>(n), s);
  }
  // Grow to at least n elements, keeping the first `keep` elements.
  void grow(int64_t n, int64_t keep, cudaStream_t s) {
    if (n <= size_) return;
    T* np = nullptr;
    device_alloc(reinterpret_cast<void**>(&np), sizeof(T) * static_cast<size_t>(n), s);
    if (keep > 0) {
      const cudaError_t e = cudaMemcpyAsync(np, p_, sizeof(T) * keep, cudaMemcpyDeviceToDevice, s);
      if (e != cudaSuccess) {
        device_free(np, s);  // the new block would otherwise leak on this error path
        check(e, "cudaMemcpyAsync (Scratch::grow)");
      }
    }
    release();
    p_ = np;
    size_ = n;
    stream_ = s;
  }
  T* get() const { return p_; }
  int64_t size() const { return size_; }

 private:
  void release() {
    device_free(p_, stream_);
    p_ = nullptr;
    size_ = 0;
  }
  T* p_ = nullptr;
  int64_t size_ = 0;
  cudaStream_t stream_ = nullptr;
};

// ---- device helpers ------------------------------------------------------------------------------

// Block of row r: the last b with offsets[b] <= r (empty blocks are skipped automatically).
// offsets == nullptr: one row per block.
__device__ __forceinline__ int64_t block_of_row(const int64_t* offsets, int64_t n_blocks, int64_t r) {
  if (!offsets) return r;
  int64_t lo = 0, hi = n_blocks;  // invariant: offsets[lo] <= r < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) >> 1;
    if (offsets[mid] <= r)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}
__device__ __forceinline__ int64_t block_begin(const int64_t* offsets, int64_t b) { return offsets ? offsets[b] : b; }
__device__ __forceinline__ int64_t block_end(const int64_t* offsets, int64_t b) { return offsets ? offsets[b + 1] : b + 1; }

// "a ranks before b": larger value first, lower index on ties; index < 0 means "nothing yet".
__device__ __forceinline__ bool ranks_before(double va, int64_t ia, double vb, int64_t ib) {
  if (ib < 0) return ia >= 0;
  if (ia < 0) return false;
  return va > vb || (va == vb && ia < ib);
}

// Block-wide argmax (value desc, index asc) for blockDim.x <= 1024, a multiple of 32. All threads
// get the result.
__device__ inline void block_argmax(double& v, int64_t& i) {
  __shared__ double s_v[32];
  __shared__ int64_t s_i[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const double ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ranks_before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  if (lane == 0) {
    s_v[warp] = v;
    s_i[warp] = i;
  }
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = -INFINITY;
  i = -1;
  for (int w = 0; w < n_warps; ++w)
    if (ranks_before(s_v[w], s_i[w], v, i)) {
      v = s_v[w];
      i = s_i[w];
    }
  __syncthreads();  // s_v / s_i may be reused by the caller
}

// Block-wide sum of doubles in a fixed order (deterministic). All threads get the result.
__device__ inline double block_sum(double v) {
  __shared__ double s[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) s[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  double t = 0.0;
  for (int w = 0; w < n_warps; ++w) t += s[w];
  __syncthreads();
  return t;
}

// Grid size for a grid-stride loop over n items with `threads` per block.
inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t g = ceil_div(n, threads);
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g);
}

}  // namespace ntkal::cuda::detail
