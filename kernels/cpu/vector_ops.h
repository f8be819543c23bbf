// Small loops over contiguous vectors shared by the CPU reference kernels (header-only so they
// inline into each kernel's inner loop).
#pragma once

#include <cstdint>

namespace msa::cpu {

// sum_i a_i b_i, accumulated in T in index order.
template <class T>
inline T dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += a x
template <class T>
inline void axpy(T a, const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace msa::cpu
