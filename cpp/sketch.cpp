#include "sketch.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "fixed_order.hpp"
#include "common.hpp"
#include "philox.hpp"

namespace ntkal {

namespace {
constexpr int64_t kGaussianTile = 256;  // parameters generated per GEMM tile

// Fill tile (n_p x dim) with S[p0 : p0 + n_p, :] for the Gaussian kind.
template <class T>
void gaussian_tile(uint64_t seed, int64_t p0, int64_t n_p, int64_t dim, T* tile) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
#pragma omp parallel for schedule(static) if (n_p * dim > 4096)
  for (int64_t r = 0; r < n_p; ++r) {
    double z[4];
    T* row = tile + r * dim;
    for (int64_t q = 0; q * 4 < dim; ++q) {
      philox::gaussian4(seed, static_cast<uint64_t>(p0 + r), static_cast<uint32_t>(q), z);
      for (int64_t c = 0; c < 4 && q * 4 + c < dim; ++c) row[q * 4 + c] = static_cast<T>(z[c] * scale);
    }
  }
}
}  // namespace

Sketch::Sketch(int64_t n_params, int64_t dim, SketchKind kind, uint64_t seed, int nnz)
    : n_params_(n_params), dim_(dim), kind_(kind), seed_(seed), nnz_(nnz) {
  if (n_params <= 0) throw InvalidArgument("Sketch: n_params must be > 0, got " + std::to_string(n_params));
  if (dim <= 0) throw InvalidArgument("Sketch: dim must be > 0, got " + std::to_string(dim));
  if (dim > (int64_t(1) << 31)) throw InvalidArgument("Sketch: dim must be < 2^31, got " + std::to_string(dim));
  if (kind == SketchKind::SparseSign && (nnz < 1 || nnz > dim))
    throw InvalidArgument("Sketch: nnz must be in [1, dim=" + std::to_string(dim) + "], got " + std::to_string(nnz));
}

void Sketch::check_chunk(int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset) const {
  if (m < 0 || p_chunk < 0) throw InvalidArgument("Sketch.project: J must have non-negative shape");
  if (ldj < p_chunk) throw InvalidArgument("Sketch.project: leading dimension of J smaller than its width");
  if (col_offset < 0 || col_offset + p_chunk > n_params_)
    throw InvalidArgument("Sketch.project: columns [" + std::to_string(col_offset) + ", " +
                          std::to_string(col_offset + p_chunk) + ") fall outside n_params=" +
                          std::to_string(n_params_));
}

template <class T>
void Sketch::project_gaussian(const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                              float* out) const {
  std::vector<T> tile(static_cast<size_t>(std::min(kGaussianTile, p_chunk) * dim_));
  // double inputs accumulate in double and are rounded once at the end
  std::vector<double> acc;
  if constexpr (std::is_same_v<T, double>) acc.assign(static_cast<size_t>(m * dim_), 0.0);
  for (int64_t p0 = 0; p0 < p_chunk; p0 += kGaussianTile) {
    int64_t n_p = std::min(kGaussianTile, p_chunk - p0);
    gaussian_tile(seed_, col_offset + p0, n_p, dim_, tile.data());
    if constexpr (std::is_same_v<T, double>)
      fixed::gemm(false, false, m, dim_, n_p, j + p0, ldj, tile.data(), dim_, fixed::Update::Add, acc.data(), dim_);
    else
      fixed::gemm(false, false, m, dim_, n_p, j + p0, ldj, tile.data(), dim_, fixed::Update::Add, out, dim_);
  }
  if constexpr (std::is_same_v<T, double>)
    for (int64_t i = 0; i < m * dim_; ++i) out[i] += static_cast<float>(acc[i]);
}

template <class T>
void Sketch::project_sparse(const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                            float* out) const {
  const int s = nnz_;
  std::vector<uint32_t> bucket(static_cast<size_t>(p_chunk * s));
  std::vector<float> value(static_cast<size_t>(p_chunk * s));
  const double v = 1.0 / std::sqrt(static_cast<double>(s));
#pragma omp parallel for schedule(static) if (p_chunk > 1024)
  for (int64_t p = 0; p < p_chunk; ++p) {
    for (int t = 0; t < s; ++t) {
      uint32_t b;
      int sg;
      philox::sparse_entry(seed_, static_cast<uint64_t>(col_offset + p), static_cast<uint32_t>(t),
                           static_cast<uint32_t>(dim_), &b, &sg);
      bucket[p * s + t] = b;
      value[p * s + t] = static_cast<float>(sg * v);
    }
  }
  // Rows are independent; a d-length double accumulator per row stays in L1.
#pragma omp parallel if (m > 1 && m * p_chunk > 65536)
  {
    std::vector<double> acc(static_cast<size_t>(dim_));
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < m; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const T* ji = j + i * ldj;
      for (int64_t p = 0; p < p_chunk; ++p) {
        const double x = static_cast<double>(ji[p]);
        if (x == 0.0) continue;
        for (int t = 0; t < s; ++t) acc[bucket[p * s + t]] += value[p * s + t] * x;
      }
      float* oi = out + i * dim_;
      for (int64_t c = 0; c < dim_; ++c) oi[c] += static_cast<float>(acc[c]);
    }
  }
}

template <class T>
void Sketch::project_any(const T* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset, float* out) const {
  check_chunk(m, p_chunk, ldj, col_offset);
  if (m == 0 || p_chunk == 0) return;
  if (kind_ == SketchKind::Gaussian)
    project_gaussian(j, m, p_chunk, ldj, col_offset, out);
  else
    project_sparse(j, m, p_chunk, ldj, col_offset, out);
}

void Sketch::project(const float* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                     float* out) const {
  project_any(j, m, p_chunk, ldj, col_offset, out);
}

void Sketch::project(const double* j, int64_t m, int64_t p_chunk, int64_t ldj, int64_t col_offset,
                     float* out) const {
  project_any(j, m, p_chunk, ldj, col_offset, out);
}

void Sketch::dense(int64_t p_begin, int64_t p_end, double* out) const {
  if (p_begin < 0 || p_end > n_params_ || p_begin > p_end)
    throw InvalidArgument("Sketch.dense: parameter range [" + std::to_string(p_begin) + ", " +
                          std::to_string(p_end) + ") outside [0, " + std::to_string(n_params_) + ")");
  const int64_t n_p = p_end - p_begin;
  if (kind_ == SketchKind::Gaussian) {
    gaussian_tile(seed_, p_begin, n_p, dim_, out);
    return;
  }
  std::fill(out, out + n_p * dim_, 0.0);
  const double v = 1.0 / std::sqrt(static_cast<double>(nnz_));
  for (int64_t r = 0; r < n_p; ++r)
    for (int t = 0; t < nnz_; ++t) {
      uint32_t b;
      int sg;
      philox::sparse_entry(seed_, static_cast<uint64_t>(p_begin + r), static_cast<uint32_t>(t),
                           static_cast<uint32_t>(dim_), &b, &sg);
      out[r * dim_ + b] += sg * v;
    }
}

}  // namespace ntkal
