// What the GPU-vs-CPU tests share: the skip without a device, inputs both sides see identically
// (random values already rounded to bf16), device copies, NaN-poisoned outputs (an element left
// unwritten fails), and the norm-relative error of METHOD.md that fails on NaN or inf.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/tensor.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

#define SKIP_WITHOUT_GPU() \
  if (!::msa::cuda_available()) GTEST_SKIP() << "no CUDA device"

namespace msa::test {

// The scaled max error bound of bf16 outputs against the CPU (METHOD.md).
inline constexpr double kBf16Tol = 1e-2;

// A random f32 CPU tensor already rounded to bf16, so CPU and GPU see identical inputs.
inline Tensor rnd(const Shape& s, uint64_t seed, float std = 1.0f) {
  return random_tensor(s, seed, DType::kF32, std).to(DType::kBF16).to(DType::kF32);
}
inline Tensor gpu_bf16(const Tensor& t) { return t.to(DType::kBF16).to(Device::kCUDA); }
inline Tensor gpu_f32(const Tensor& t) { return t.to(DType::kF32).to(Device::kCUDA); }
inline Tensor host(const Tensor& t) { return t.to(Device::kCPU).to(DType::kF32); }
// A device tensor filled with NaN: every element the kernel under test must write.
inline Tensor gpu_nan(const Shape& s, DType dt = DType::kBF16) {
  Tensor t = Tensor::empty(s, dt, Device::kCUDA);
  t.fill_(std::nan(""));
  return t;
}

// ||a - b|| / ||b||; infinity when either side holds a NaN or inf, when the sizes differ, or when
// both are empty (nothing compared proves nothing).
inline double rel_l2(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  if (x.size() != y.size() || x.empty()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i]))
      return std::numeric_limits<double>::infinity();
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace msa::test
