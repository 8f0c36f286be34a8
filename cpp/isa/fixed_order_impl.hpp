// The fixed-order kernels, written once over a SIMD traits type S and compiled once per instruction
// set (fixed_order_<isa>.cpp). Every output element is a sequential fma chain over the inner index:
//   GEMM:     c = fma(a_0, b_0, c0); c = fma(a_1, b_1, c); ...   (c0 = 0 or the old C; Subtract
//             negates A while packing, which is exact)
//   Cholesky: a_ij = fma(-l_ik, l_jk, a_ij) for k = 0, 1, ... (right-looking, k outermost)
//   solve:    y_i = (b_i + sum_k fma(-l_ik, y_k, .)) / l_ii, k = 0 .. i-1 in order, whatever the blocking
// so the vector width (lanes are independent elements), the thread split (threads own output tiles)
// and the cache blocking never change a result bit.
//
// This header is included by translation units compiled with different -m flags. To keep an
// AVX-512 copy of some shared inline function from being linked into baseline code, it uses no
// std:: container or algorithm templates: only raw loops, builtins and its own Buffer.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernel_table.hpp"

namespace ntkal::fixed::NTKAL_ISA_NAMESPACE {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }

template <class T>
struct Buffer {  // owning, uninitialised array (no std::vector: see the header comment)
  T* p;
  explicit Buffer(int64_t n) : p(new T[static_cast<size_t>(n > 0 ? n : 1)]) {}
  ~Buffer() { delete[] p; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

template <class S>
struct Kernels {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;
  static constexpr int MR = S::MR;  // rows of A per micro-tile (2 * MR accumulators)
  static constexpr int NR = 2 * W;  // columns of B per micro-tile
  // KC keeps one packed B panel (KC x NR) plus one A panel (KC x MR) inside L1
  static constexpr int64_t KC = S::KC, MC = 8 * MR, NC = 1024;

  // y[0:len) = fma(alpha, x, y)
  static inline void axpy(int64_t len, T alpha, const T* x, T* y) {
    const V va = S::set1(alpha);
    int64_t j = 0;
    for (; j + W <= len; j += W) S::store(y + j, S::fma(va, S::load(x + j), S::load(y + j)));
    for (; j < len; ++j) y[j] = S::fma1(alpha, x[j], y[j]);
  }

  // MR x NR tile of C (leading dim ldc) op= packed A panel (kc x MR) * packed B panel (kc x NR)
  static inline void micro(int64_t kc, const T* __restrict ap, const T* __restrict bp, T* c, int64_t ldc,
                           bool load) {
    V c0[MR], c1[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      c0[r] = load ? S::load(c + r * ldc) : S::zero();
      c1[r] = load ? S::load(c + r * ldc + W) : S::zero();
    }
    for (int64_t p = 0; p < kc; ++p) {
      const V b0 = S::load(bp), b1 = S::load(bp + W);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const V a = S::set1(ap[r]);
        c0[r] = S::fma(a, b0, c0[r]);
        c1[r] = S::fma(a, b1, c1[r]);
      }
      ap += MR;
      bp += NR;
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      S::store(c + r * ldc, c0[r]);
      S::store(c + r * ldc + W, c1[r]);
    }
  }

  // rows [i0, i0 + mc) x inner [p0, p0 + kc) of op(A), times sign, as MR-row panels (zero padded)
  static void pack_a(bool ta, const T* a, int64_t lda, int64_t i0, int64_t mc, int64_t p0, int64_t kc, T sign,
                     T* out) {
    for (int64_t q = 0; q * MR < mc; ++q) {
      T* o = out + q * MR * kc;
      const int64_t rows = lo(MR, mc - q * MR), ib = i0 + q * MR;
      if (ta) {
        for (int64_t p = 0; p < kc; ++p)
          for (int64_t r = 0; r < MR; ++r) o[p * MR + r] = r < rows ? sign * a[(p0 + p) * lda + ib + r] : T(0);
      } else if (rows == MR) {  // contiguous writes, MR sequential read streams
        for (int64_t p = 0; p < kc; ++p)
          for (int64_t r = 0; r < MR; ++r) o[p * MR + r] = sign * a[(ib + r) * lda + p0 + p];
      } else {
        for (int64_t p = 0; p < kc; ++p)
          for (int64_t r = 0; r < MR; ++r) o[p * MR + r] = r < rows ? sign * a[(ib + r) * lda + p0 + p] : T(0);
      }
    }
  }

  // rows [i0, i0 + mc) of A (not transposed), every k block at once: the k block at p0 starts at
  // p0 * MC, as pack_a lays it out. Reads each row once front to back (a contiguous tile streams).
  static void pack_a_all_k(const T* a, int64_t lda, int64_t i0, int64_t mc, int64_t k, T* out) {
    for (int64_t r = 0; r < MC; ++r) {
      const int64_t q = r / MR, rr = r % MR;
      const T* src = a + (i0 + r) * lda;
      for (int64_t p0 = 0; p0 < k; p0 += KC) {
        const int64_t kc = lo(KC, k - p0);
        T* o = out + p0 * MC + q * MR * kc + rr;
        for (int64_t p = 0; p < kc; ++p) o[p * MR] = r < mc ? src[p0 + p] : T(0);
      }
    }
  }

  // columns [j0, j0 + cols) x inner [p0, p0 + kc) of op(B) as one NR-column panel (zero padded)
  static void pack_b(bool tb, const T* b, int64_t ldb, int64_t j0, int64_t cols, int64_t p0, int64_t kc, T* o) {
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t jj = 0; jj < NR; ++jj)
        o[p * NR + jj] = jj < cols ? (tb ? b[(j0 + jj) * ldb + p0 + p] : b[(p0 + p) * ldb + j0 + jj]) : T(0);
  }

  static void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                   int64_t ldb, Update update, T* c, int64_t ldc, bool lower) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
      if (update == Update::Overwrite)
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = T(0);
      return;
    }
    const T sign = update == Update::Subtract ? T(-1) : T(1);
    const int64_t kc_max = lo(KC, k), nc_max = lo(NC, (n + NR - 1) / NR * NR);
    const int64_t n_iblocks = (m + MC - 1) / MC;
    Buffer<T> bpack(nc_max * kc_max);
    const bool parallel = n_iblocks > 1 && static_cast<double>(m) * n * k > 4e6;
#pragma omp parallel if (parallel)
    {
      Buffer<T> apack(MC * kc_max);
      T tile[MR * NR];
      for (int64_t j0 = 0; j0 < n; j0 += NC) {
        const int64_t nc = lo(NC, n - j0), n_panels = (nc + NR - 1) / NR;
        for (int64_t p0 = 0; p0 < k; p0 += KC) {  // k blocks in order: each chain continues in C
          const int64_t kc = lo(KC, k - p0);
          const bool load = p0 > 0 || update != Update::Overwrite;
#pragma omp for schedule(static)
          for (int64_t q = 0; q < n_panels; ++q)
            pack_b(tb, b, ldb, j0 + q * NR, lo(NR, nc - q * NR), p0, kc, bpack.p + q * NR * kc);
#pragma omp for schedule(static)
          for (int64_t ib = 0; ib < n_iblocks; ++ib) {
            const int64_t i0 = ib * MC, mc = lo(MC, m - i0);
            if (lower && j0 > i0 + mc - 1) continue;
            pack_a(ta, a, lda, i0, mc, p0, kc, sign, apack.p);
            for (int64_t q = 0; q < n_panels; ++q) {
              const int64_t jj0 = j0 + q * NR, cols = lo(NR, nc - q * NR);
              const T* bp = bpack.p + q * NR * kc;
              for (int64_t r0 = 0; r0 < mc; r0 += MR) {
                const int64_t ii0 = i0 + r0, rows = lo(MR, mc - r0);
                if (lower && jj0 > ii0 + rows - 1) continue;
                const T* ap = apack.p + r0 * kc;
                T* cp = c + ii0 * ldc + jj0;
                if (rows == MR && cols == NR) {
                  micro(kc, ap, bp, cp, ldc, load);
                  continue;
                }
                for (int64_t r = 0; r < MR; ++r)
                  for (int64_t jj = 0; jj < NR; ++jj)
                    tile[r * NR + jj] = (load && r < rows && jj < cols) ? cp[r * ldc + jj] : T(0);
                micro(kc, ap, bp, tile, NR, load);
                for (int64_t r = 0; r < rows; ++r)
                  for (int64_t jj = 0; jj < cols; ++jj) cp[r * ldc + jj] = tile[r * NR + jj];
              }
            }
          }
        }
      }
    }
  }

  // norms[i] = sqnorm(row i of A B^T), A n x k, B e x k. Each thread computes whole MC-row tiles of
  // W = A B^T into an L2-resident buffer and reduces them at once, so W never goes to memory.
  static void row_sqnorms(int64_t n, int64_t e, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                          double (*sqnorm)(const T*, int64_t), double* norms) {
    if (n <= 0) return;
    const int64_t n_panels = (e + NR - 1) / NR, ldw = n_panels * NR, n_tiles = (n + MC - 1) / MC;
    const int64_t n_kblocks = (k + KC - 1) / KC;
    Buffer<T> bpack(ldw * (k > 0 ? k : 1));  // k block at p0 starts at p0 * ldw, panel q at + q * NR * kc
    const bool parallel = n_tiles > 1 && static_cast<double>(n) * e * k > 4e6;
#pragma omp parallel if (parallel)
    {
#pragma omp for schedule(static)
      for (int64_t idx = 0; idx < n_kblocks * n_panels; ++idx) {
        const int64_t p0 = idx / n_panels * KC, q = idx % n_panels, kc = lo(KC, k - p0);
        pack_b(true, b, ldb, q * NR, lo(NR, e - q * NR), p0, kc, bpack.p + p0 * ldw + q * NR * kc);
      }
      Buffer<T> apack(MC * (k > 0 ? k : 1)), w(MC * ldw);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n_tiles; ++t) {
        const int64_t i0 = t * MC, mc = lo(MC, n - i0);
        if (k <= 0)
          for (int64_t i = 0; i < MC * ldw; ++i) w.p[i] = T(0);
        pack_a_all_k(a, lda, i0, mc, k, apack.p);
        // The next tile's rows are fetched from memory while this one computes, a few lines per
        // micro-tile (a tile is one contiguous stretch of rows when lda == k).
        const char* next = reinterpret_cast<const char*>(a + (i0 + MC) * lda);
        const int64_t next_bytes = lda == k ? lo(MC, n - i0 - MC) * k * static_cast<int64_t>(sizeof(T)) : 0;
        const int64_t calls = n_kblocks * n_panels * ((mc + MR - 1) / MR);
        const int64_t per_call = (next_bytes / 64 + calls - 1) / (calls > 0 ? calls : 1);
        int64_t fetched = 0;
        for (int64_t p0 = 0; p0 < k; p0 += KC) {
          const int64_t kc = lo(KC, k - p0);
          for (int64_t q = 0; q < n_panels; ++q)
            for (int64_t r0 = 0; r0 < mc; r0 += MR) {
              for (int64_t f = 0; f < per_call && fetched < next_bytes; ++f, fetched += 64)
                __builtin_prefetch(next + fetched, 0, 2);
              micro(kc, apack.p + p0 * MC + r0 * kc, bpack.p + p0 * ldw + q * NR * kc, w.p + r0 * ldw + q * NR, ldw,
                    p0 > 0);
            }
        }
        for (int64_t r = 0; r < mc; ++r) norms[i0 + r] = sqnorm(w.p + r * ldw, e);
      }
    }
  }

  static int cholesky_lower(int64_t n, T* a, int64_t lda) {
    Buffer<T> col(n);
    for (int64_t k = 0; k < n; ++k) {
      const T piv = a[k * lda + k];
      if (!(piv > T(0)) || !std::isfinite(piv)) return static_cast<int>(k + 1);
      const T lkk = std::sqrt(piv);
      a[k * lda + k] = lkk;
      for (int64_t i = k + 1; i < n; ++i) col.p[i] = a[i * lda + k] = a[i * lda + k] / lkk;
      // trailing update of the lower triangle, one row per task (each element owned by one thread)
#pragma omp parallel for schedule(dynamic, 16) if (n - k > 256)
      for (int64_t i = k + 1; i < n; ++i) axpy(i - k, -col.p[i], col.p + k + 1, a + i * lda + k + 1);
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i + 1; j < n; ++j) a[i * lda + j] = T(0);
    return 0;
  }

  // Row i of W = L^{-1}: W[i, :i] = -(sum_k L[i,k] W[k, :]) / L[i,i], rows in order, in place.
  static void inverse_lower(int64_t n, T* a, int64_t lda) {
    Buffer<T> li(n), acc(n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j <= i; ++j) li.p[j] = a[i * lda + j];
      for (int64_t j = 0; j < i; ++j) acc.p[j] = T(0);
      for (int64_t k = 0; k < i; ++k) axpy(k + 1, li.p[k], a + k * lda, acc.p);
      for (int64_t j = 0; j < i; ++j) a[i * lda + j] = -acc.p[j] / li.p[i];
      a[i * lda + i] = T(1) / li.p[i];
    }
  }

  // B <- B L^{-T}. Panels of NB columns: the GEMM subtracts the solved columns' contribution, then
  // the diagonal block is solved on a transposed tile of rows, vectorised across rows.
  static void solve_lower_rows(int64_t m, int64_t n, const T* l, int64_t ldl, T* b, int64_t ldb) {
    constexpr int64_t NB = 64, RT = 64;
    for (int64_t p0 = 0; p0 < n; p0 += NB) {
      const int64_t nb = lo(NB, n - p0);
      if (p0 > 0) gemm(false, true, m, nb, p0, b, ldb, l + p0 * ldl, ldl, Update::Subtract, b + p0, ldb, false);
#pragma omp parallel if (m > RT && m * nb * nb > 65536)
      {
        Buffer<T> t(NB * RT);
#pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < m; r0 += RT) {
          const int64_t rows = lo(RT, m - r0);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < nb; ++i) t.p[i * RT + r] = b[(r0 + r) * ldb + p0 + i];
          for (int64_t i = 0; i < nb; ++i) {
            T* ti = t.p + i * RT;
            const T* li = l + (p0 + i) * ldl + p0;
            for (int64_t kk = 0; kk < i; ++kk) axpy(rows, -li[kk], t.p + kk * RT, ti);
            for (int64_t r = 0; r < rows; ++r) ti[r] = ti[r] / li[i];
          }
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < nb; ++i) b[(r0 + r) * ldb + p0 + i] = t.p[i * RT + r];
        }
      }
    }
  }
};

template <class SF, class SD>
const KernelTable& make_table(const char* name) {
  static const KernelTable table{name,
                                 &Kernels<SF>::gemm,
                                 &Kernels<SD>::gemm,
                                 &Kernels<SF>::row_sqnorms,
                                 &Kernels<SD>::cholesky_lower,
                                 &Kernels<SD>::inverse_lower,
                                 &Kernels<SD>::solve_lower_rows};
  return table;
}

}  // namespace ntkal::fixed::NTKAL_ISA_NAMESPACE
