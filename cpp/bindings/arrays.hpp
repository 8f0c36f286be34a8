// Helpers shared by the register_*.cpp files: typed views of NumPy arrays that the Python layer
// has already validated (float32/float64 C-contiguous, int64 offsets).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "common.hpp"

namespace ntkal::bind {

namespace py = pybind11;
using F32 = py::array_t<float, py::array::c_style>;
using F64 = py::array_t<double, py::array::c_style>;
using I64 = py::array_t<int64_t, py::array::c_style>;

inline RowsView rows_view(const F32& a, const char* where) {
  if (a.ndim() != 2) throw InvalidArgument(std::string(where) + ": rows must be 2-D");
  return RowsView{a.data(), a.shape(0), a.shape(1)};
}

// offsets may be None (one row per block)
inline BlocksView blocks_view(const F32& rows, const py::object& offsets, const char* where) {
  BlocksView b;
  b.rows = rows_view(rows, where);
  if (offsets.is_none()) {
    b.offsets = nullptr;
    b.n_blocks = b.rows.n_rows;
    return b;
  }
  auto off = offsets.cast<I64>();
  if (off.ndim() != 1 || off.shape(0) < 1) throw InvalidArgument(std::string(where) + ": offsets must be 1-D, length >= 1");
  b.offsets = off.data();
  b.n_blocks = off.shape(0) - 1;
  check_offsets(b.offsets, b.n_blocks, b.rows.n_rows, where);
  return b;
}

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(), owner);
}

}  // namespace ntkal::bind
