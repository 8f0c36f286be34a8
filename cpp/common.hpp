// Shared types of the ntkal engine: errors, ragged-block views, thread control.
// No Python headers here: the engine is usable from plain C++ and from the CUDA backend.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ntkal {

// Raised for any invalid argument; the bindings translate it to ntkal.InvalidArgumentError
// (a ValueError). Messages name the function and argument.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Raised when a numerical step fails even after bounded retries (e.g. Cholesky).
class NumericalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// C-contiguous float32 feature rows: n_rows x dim.
struct RowsView {
  const float* data = nullptr;
  int64_t n_rows = 0;
  int64_t dim = 0;
  const float* row(int64_t i) const { return data + i * dim; }
};

// Ragged blocks: structure i owns rows [offsets[i], offsets[i+1]).
// offsets == nullptr means one row per block.
struct BlocksView {
  RowsView rows;
  const int64_t* offsets = nullptr;
  int64_t n_blocks = 0;
  int64_t begin(int64_t i) const { return offsets ? offsets[i] : i; }
  int64_t end(int64_t i) const { return offsets ? offsets[i + 1] : i + 1; }
  int64_t size(int64_t i) const { return end(i) - begin(i); }
};

// Validates offsets (monotone, start 0, end n_rows); throws InvalidArgument naming `where`.
void check_offsets(const int64_t* offsets, int64_t n_blocks, int64_t n_rows, const std::string& where);
// True when every value is finite (OpenMP-parallel).
bool all_finite(const float* data, int64_t n);
bool all_finite(const double* data, int64_t n);

// Thread control for both OpenMP loops and BLAS.
void set_num_threads(int n);
int get_num_threads();

}  // namespace ntkal
