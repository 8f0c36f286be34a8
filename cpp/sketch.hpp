// Implicit random sketch S (n_params x dim). Every entry is a pure function of (seed, p, j),
// so any parameter chunk can be projected on its own and S is never stored whole.
#pragma once
#include <cstdint>
#include <vector>

#include "options.hpp"

namespace ntkal {


class Sketch {
 public:
  Sketch(int64_t n_params, int64_t dim, SketchKind kind, uint64_t seed, int nnz);

  // out (m x dim, row-major) += J (m x p_chunk, leading dim ldj) * S[col_offset : col_offset + p_chunk, :].
  void project(const float* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset, float* out) const;
  void project(const double* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset, float* out) const;

  // Dense rows S[p_begin:p_end, :] into out ((p_end - p_begin) x dim), for tests and small models.
  void dense(int64_t p_begin, int64_t p_end, double* out) const;

  int64_t n_params() const { return n_params_; }
  int64_t dim() const { return dim_; }
  SketchKind kind() const { return kind_; }
  uint64_t seed() const { return seed_; }
  int nnz() const { return nnz_; }

 private:
  template <class T>
  void project_any(const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset, float* out) const;
  template <class T>
  void project_gaussian(const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset, float* out) const;
  template <class T>
  void project_sparse(const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset, float* out) const;
  void check_chunk(int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset) const;

  int64_t n_params_, dim_;
  SketchKind kind_;
  uint64_t seed_;
  int nnz_;
};

}  // namespace ntkal
