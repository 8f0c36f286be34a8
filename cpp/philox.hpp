// Philox-4x32-10 counter-based generator (Salmon et al., SC'11) and the sketch-entry functions
// built on it. Header-only and host/device: the CUDA backend includes this same file so CPU and
// GPU sketches agree entry for entry.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NTKAL_HD __host__ __device__ __forceinline__
#else
#define NTKAL_HD inline
#endif

namespace ntkal::philox {

struct U4 {
  uint32_t v[4];
};

NTKAL_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

NTKAL_HD U4 philox4x32_10(U4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c.v[0], &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c.v[2], &hi1);
    U4 n;
    n.v[0] = hi1 ^ c.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ c.v[3] ^ k1;
    n.v[3] = lo0;
    c = n;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// Domain tags keep the two sketch kinds (and the Gram sketch) on disjoint counter streams.
constexpr uint32_t kTagGaussian = 0x6A09E667u;
constexpr uint32_t kTagSparse = 0x3C6EF372u;

// Uniform in the open interval (0, 1) from 32 random bits.
NTKAL_HD double uniform_open(uint32_t x) { return (static_cast<double>(x) + 0.5) * 2.3283064365386963e-10; }

// Four standard normals for parameter p and columns 4*q .. 4*q+3 (Box-Muller on two pairs).
NTKAL_HD void gaussian4(uint64_t seed, uint64_t p, uint32_t q, double out[4]) {
  U4 c{{q, static_cast<uint32_t>(p), static_cast<uint32_t>(p >> 32), kTagGaussian}};
  U4 r = philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  for (int h = 0; h < 2; ++h) {
    double u1 = uniform_open(r.v[2 * h]), u2 = uniform_open(r.v[2 * h + 1]);
    double rad = std::sqrt(-2.0 * std::log(u1));
    double ang = 6.283185307179586 * u2;
    out[2 * h] = rad * std::cos(ang);
    out[2 * h + 1] = rad * std::sin(ang);
  }
}

// Bucket in [0, dim) and sign (+1/-1) of nonzero t of parameter p in a sparse sign sketch.
NTKAL_HD void sparse_entry(uint64_t seed, uint64_t p, uint32_t t, uint32_t dim, uint32_t* bucket, int* sign) {
  U4 c{{t, static_cast<uint32_t>(p), static_cast<uint32_t>(p >> 32), kTagSparse}};
  U4 r = philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  *bucket = static_cast<uint32_t>((static_cast<uint64_t>(r.v[0]) * dim) >> 32);
  *sign = (r.v[1] & 1u) ? 1 : -1;
}

}  // namespace ntkal::philox
