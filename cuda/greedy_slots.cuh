// Device side of the lazy greedy-PV selection (greedy_pv.cu): the state of the "active" blocks and
// the two kernels that find each pick.
//
// Blocks are activated in the order of their initial PV (an upper bound of their PV forever), so the
// active blocks are a prefix of that order and slot s holds block order[s]. A slot stores
//   value     = noise_var * (base - projected), exact after the picks [0, stamp), an upper bound later;
//   projected = term(0) + term(1) + ... + term(stamp - 1), in pick order,
//   term(k)   = sum over the slot's rows r and the V rows j of pick k of (u_j . phi_r)^2,
// with u_j = M^T v_j (U = V M), so coefficients come from the pool's float32 rows phi directly and no
// whitened row is ever stored. Each term is computed the same way whenever the slot is refreshed
// (one warp, fixed order), so a slot's value never depends on when it was brought up to date, and
// identical blocks get identical values (ties then go to the lower index, as on the CPU).
//
// One pick = stage 1 + stage 2 (each a grid pass over the active slots that ends in its last CTA):
//   1. S = best stored value (fresh or stale); if S is stale, the last CTA refreshes it. F = the best of
//      S and the fresh slots. Every slot that could beat F is now either fresh or stale with a stored
//      value that ranks before F.
//   2. those stale slots are refreshed (one warp each); F' = best fresh slot. F' is the greedy pick if
//      it ranks before the first inactive block's bound; the last CTA records it. Otherwise the host
//      activates more blocks and repeats.
// "ranks before": larger value first, lower block index on ties (common.cuh ranks_before).
#pragma once
#include <cstdint>

#include "common.cuh"

namespace ntkal::cuda::detail {

constexpr int kSlotThreads = 256;  // slots per CTA of the two pick passes

struct Candidate {
  double value;
  int64_t block;  // -1: none
  int64_t slot;
};

struct PickResult {
  double value;
  int64_t block, slot;
  int64_t ok;  // 1: recorded as pick `step`; 0: more blocks must be activated first
};

struct SlotState {
  const float* rows;  // the pool's rows, n_rows x d, contiguous
  int64_t d;
  const int64_t* offsets;  // device offsets, or nullptr: one row per block
  const int64_t* order;    // slot -> block: blocks by decreasing bound, ties by index
  const double* sorted_bound;  // noise_var * base[order[s]]
  const double* base;          // per block: sum of ||M phi_r||^2 over its rows
  double noise_var;
  double* value;
  double* projected;
  int* stamp;
  unsigned char* selected;
  const double* u;           // U rows (u_j = M^T v_j), t x d
  const int64_t* pick_cols;  // pick k (k < now) owns U rows [pick_cols[k], pick_cols[k + 1])
  Candidate* part_any;       // per CTA of a pass
  Candidate* part_fresh;
  Candidate* best;           // stage 1 -> stage 2
  unsigned int* counter;     // CTAs finished in the current pass (the last CTA resets it to 0)
  PickResult* result;
  int64_t* out_indices;
  double* out_scores;
};

__device__ __forceinline__ Candidate no_candidate() { return Candidate{-INFINITY, -1, -1}; }
__device__ __forceinline__ bool better(const Candidate& a, const Candidate& b) {
  return ranks_before(a.value, a.block, b.value, b.block);
}

// Best candidate of the CTA, returned to every thread. The order is total (distinct blocks), so the
// result does not depend on the reduction order.
__device__ inline Candidate cta_best(Candidate c) {
  __shared__ Candidate s_best[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    Candidate other;
    other.value = __shfl_xor_sync(0xffffffffu, c.value, o);
    other.block = __shfl_xor_sync(0xffffffffu, c.block, o);
    other.slot = __shfl_xor_sync(0xffffffffu, c.slot, o);
    if (better(other, c)) c = other;
  }
  if (lane == 0) s_best[warp] = c;
  __syncthreads();
  c = no_candidate();
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w)
    if (better(s_best[w], c)) c = s_best[w];
  __syncthreads();  // s_best may be reused by the next call
  return c;
}

// A partial written by another CTA of this grid: read from L2, never from a stale L1 line.
__device__ __forceinline__ Candidate load_partial(const Candidate* p) {
  return Candidate{__ldcg(&p->value), static_cast<int64_t>(__ldcg(reinterpret_cast<const long long*>(&p->block))),
                   static_cast<int64_t>(__ldcg(reinterpret_cast<const long long*>(&p->slot)))};
}

// True in the CTA that finishes last (all threads get it). Thread 0 must have written this CTA's
// partials before the call; the fence orders them before the counter increment.
__device__ inline bool last_cta(unsigned int* counter) {
  __shared__ bool s_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    s_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (s_last) __threadfence();
  return s_last;
}

// c[q] = u_{j+q} . phi for q < cols (<= 4); every lane gets the same sums: each lane chains k = lane,
// lane + 32, ... in order, then a fixed butterfly (commutative pairs, so all lanes agree).
__device__ __forceinline__ void warp_dots(const float* __restrict__ phi, const double* __restrict__ u, int64_t d,
                                          int cols, double (&c)[4]) {
  const int lane = threadIdx.x & 31;
  double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
  for (int64_t k = lane; k < d; k += 32) {
    const double x = static_cast<double>(phi[k]);
    a0 = fma(x, u[k], a0);
    if (cols > 1) a1 = fma(x, u[d + k], a1);
    if (cols > 2) a2 = fma(x, u[2 * d + k], a2);
    if (cols > 3) a3 = fma(x, u[3 * d + k], a3);
  }
  for (int o = 16; o > 0; o >>= 1) {
    a0 += __shfl_xor_sync(0xffffffffu, a0, o);
    a1 += __shfl_xor_sync(0xffffffffu, a1, o);
    a2 += __shfl_xor_sync(0xffffffffu, a2, o);
    a3 += __shfl_xor_sync(0xffffffffu, a3, o);
  }
  c[0] = a0;
  c[1] = a1;
  c[2] = a2;
  c[3] = a3;
}

// projected + term(k0) + ... + term(now - 1) for a one-row slot: columns four at a time across picks.
__device__ inline double terms_one_row(const SlotState& st, const float* phi, int k0, int now, double proj) {
  const int64_t j_end = st.pick_cols[now];
  int k = k0;
  int64_t next = k0 < now ? st.pick_cols[k0 + 1] : j_end;  // first column of pick k + 1
  double term = 0.0;
  for (int64_t j = st.pick_cols[k0]; j < j_end; j += 4) {
    const int cols = static_cast<int>(j_end - j < 4 ? j_end - j : 4);
    double c[4];
    warp_dots(phi, st.u + j * st.d, st.d, cols, c);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (q >= cols) break;
      if (j + q == next) {  // pick k is complete
        proj = proj + term;
        term = 0.0;
        ++k;
        next = st.pick_cols[k + 1];
      }
      term = fma(c[q], c[q], term);
    }
  }
  if (k0 < now) proj = proj + term;
  return proj;
}

// The same for any row count (0 included): pick by pick, rows in order, columns in order.
__device__ inline double terms_rows(const SlotState& st, int64_t r0, int64_t r1, int k0, int now, double proj) {
  for (int k = k0; k < now; ++k) {
    const int64_t j0 = st.pick_cols[k], j1 = st.pick_cols[k + 1];
    double term = 0.0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = j0; j < j1; j += 4) {
        const int cols = static_cast<int>(j1 - j < 4 ? j1 - j : 4);
        double c[4];
        warp_dots(st.rows + r * st.d, st.u + j * st.d, st.d, cols, c);
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (q < cols) term = fma(c[q], c[q], term);
      }
    proj = proj + term;
  }
  return proj;
}

// Brings slot up to date with the picks [stamp, now); called by all 32 lanes of one warp. Returns the
// new value (every lane).
__device__ inline double refresh_slot(const SlotState& st, int64_t slot, int now) {
  const int64_t b = st.order[slot];
  const int64_t r0 = block_begin(st.offsets, b), r1 = block_end(st.offsets, b);
  const int k0 = st.stamp[slot];
  double proj = st.projected[slot];
  proj = r1 - r0 == 1 ? terms_one_row(st, st.rows + r0 * st.d, k0, now, proj) : terms_rows(st, r0, r1, k0, now, proj);
  const double v = st.noise_var * (st.base[b] - proj);
  __syncwarp();  // every lane has read the old state
  if ((threadIdx.x & 31) == 0) {
    st.projected[slot] = proj;
    st.stamp[slot] = now;
    st.value[slot] = v;
  }
  __syncwarp();
  return v;
}

// Slots [first, last) become active: stored value = bound (exact before any pick), nothing projected.
__global__ void activate_slots_kernel(SlotState st, int64_t first, int64_t last) {
  for (int64_t s = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < last;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    st.value[s] = st.sorted_bound[s];
    st.projected[s] = 0.0;
    st.stamp[s] = 0;
    st.selected[s] = 0;
  }
}

// Stage 1 (one thread per active slot): best stored value S and best fresh slot; the last CTA
// refreshes S if it is stale and writes F = the better of S and the best fresh slot to st.best.
__global__ void __launch_bounds__(kSlotThreads, 2) pick_stage1_kernel(SlotState st, int64_t n_active, int now) {
  __shared__ int s_stale;
  __shared__ double s_value;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kSlotThreads + threadIdx.x;
  Candidate any = no_candidate(), fresh = no_candidate();
  if (s < n_active && !st.selected[s]) {
    any = Candidate{st.value[s], st.order[s], s};
    if (st.stamp[s] == now) fresh = any;
  }
  any = cta_best(any);
  fresh = cta_best(fresh);
  if (threadIdx.x == 0) {
    st.part_any[blockIdx.x] = any;
    st.part_fresh[blockIdx.x] = fresh;
  }
  if (!last_cta(st.counter)) return;
  any = no_candidate();
  fresh = no_candidate();
  for (int64_t i = threadIdx.x; i < gridDim.x; i += kSlotThreads) {
    const Candidate a = load_partial(st.part_any + i), f = load_partial(st.part_fresh + i);
    if (better(a, any)) any = a;
    if (better(f, fresh)) fresh = f;
  }
  any = cta_best(any);
  fresh = cta_best(fresh);
  if (threadIdx.x == 0) s_stale = any.slot >= 0 && st.stamp[any.slot] != now;
  __syncthreads();
  if (s_stale) {  // uniform across the CTA
    if (threadIdx.x < 32) {
      const double v = refresh_slot(st, any.slot, now);
      if (threadIdx.x == 0) s_value = v;
    }
    __syncthreads();
    any.value = s_value;
    if (better(any, fresh)) fresh = any;
  }
  if (threadIdx.x == 0) {
    *st.best = fresh;
    *st.counter = 0;
  }
}

// Stage 2: refresh the stale slots that rank before F (each warp its own 32 slots), then the best fresh
// slot F'. The last CTA checks F' against the first inactive bound and records the pick.
__global__ void __launch_bounds__(kSlotThreads, 2)
    pick_stage2_kernel(SlotState st, int64_t n_active, int64_t n_blocks, int now, int64_t step) {
  const Candidate f = *st.best;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kSlotThreads + threadIdx.x;
  bool stale_before_f = false;
  if (f.slot >= 0 && s < n_active && !st.selected[s] && st.stamp[s] != now)
    stale_before_f = ranks_before(st.value[s], st.order[s], f.value, f.block);
  unsigned int todo = __ballot_sync(0xffffffffu, stale_before_f);
  const int64_t warp_first = s - (threadIdx.x & 31);
  while (todo) {  // warp-uniform
    const int lane = __ffs(todo) - 1;
    todo &= todo - 1;
    refresh_slot(st, warp_first + lane, now);
  }
  __syncthreads();  // refreshed values visible to the CTA
  Candidate fresh = no_candidate();
  if (s < n_active && !st.selected[s] && st.stamp[s] == now) fresh = Candidate{st.value[s], st.order[s], s};
  fresh = cta_best(fresh);
  if (threadIdx.x == 0) st.part_fresh[blockIdx.x] = fresh;
  if (!last_cta(st.counter)) return;
  fresh = no_candidate();
  for (int64_t i = threadIdx.x; i < gridDim.x; i += kSlotThreads) {
    const Candidate c = load_partial(st.part_fresh + i);
    if (better(c, fresh)) fresh = c;
  }
  fresh = cta_best(fresh);
  if (threadIdx.x == 0) {
    bool ok = fresh.slot >= 0;
    if (ok && n_active < n_blocks)  // an inactive block's PV is at most its bound
      ok = ranks_before(fresh.value, fresh.block, st.sorted_bound[n_active], st.order[n_active]);
    if (ok) {
      st.out_indices[step] = fresh.block;
      st.out_scores[step] = fresh.value;
      st.selected[fresh.slot] = 1;
    }
    *st.result = PickResult{fresh.value, fresh.block, fresh.slot, ok ? 1 : 0};
    *st.counter = 0;
  }
}

}  // namespace ntkal::cuda::detail
