// One table of fixed-order kernels per instruction set; fixed_order.cpp picks one at run time.
// Each instruction set is its own translation unit compiled with its own -m flags.
#pragma once
#include <cstdint>

#include "fixed_order.hpp"

namespace ntkal::fixed {

struct KernelTable {
  const char* name;
  void (*sgemm)(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, Update, float*,
                int64_t, bool);
  void (*dgemm)(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t, Update,
                double*, int64_t, bool);
  void (*row_sqnorms)(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
                      double (*)(const float*, int64_t), double*);
  int (*cholesky_lower)(int64_t, double*, int64_t);
  void (*inverse_lower)(int64_t, double*, int64_t);
  void (*solve_lower_rows)(int64_t, int64_t, const double*, int64_t, double*, int64_t);
};

const KernelTable& scalar_kernels();
#if defined(NTKAL_X86_KERNELS)
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
#endif

}  // namespace ntkal::fixed
