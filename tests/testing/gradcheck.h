// Finite-difference gradient checks and small tensor helpers for kernel tests (header-only).
//
// Usage: make the inputs f64 CPU tensors, write the loss as a function that reads them (usually
// loss = sum(output * weights) with fixed random weights, so that backward gets dout = weights),
// run the analytic backward, then for each input
//   GradcheckResult r = gradcheck(x, dx, loss);
//   EXPECT_LT(r.max_rel_error, 1e-6) << r;
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <vector>

#include "core/tensor.h"

namespace msa::test {

struct GradcheckResult {
  // Max over elements of |analytic - numeric| / max(|analytic|, |numeric|, floor); the floor is
  // a fraction of the gradient's largest entry, so entries near zero are judged on the scale of
  // the whole gradient instead of their own.
  double max_rel_error = 0;
  int64_t worst_index = -1;
  double analytic = 0, numeric = 0;  // at worst_index
  double max_abs_grad = 0;
};

inline std::ostream& operator<<(std::ostream& os, const GradcheckResult& r) {
  return os << "max relative error " << r.max_rel_error << " at element " << r.worst_index
            << " (analytic " << r.analytic << ", numeric " << r.numeric << "; largest |gradient| "
            << r.max_abs_grad << ")";
}

// Compares `analytic` (same shape as `input`) with central differences
// (loss(x + h e_i) - loss(x - h e_i)) / 2h of `loss`, which must read `input` (a CPU f64 tensor)
// each time it runs. `input` is perturbed in place and restored exactly. A non-finite analytic or
// numeric entry, or an empty input, gives max_rel_error = +infinity.
inline GradcheckResult gradcheck(Tensor& input, const Tensor& analytic,
                                 const std::function<double()>& loss, double h = 1e-5,
                                 double floor_fraction = 1e-2) {
  MSA_CHECK(input.is_cpu(), "gradcheck: input must be a CPU tensor");
  check_dtype(input, DType::kF64, "gradcheck: input");
  check_shape(analytic, input.shape(), "gradcheck: analytic");
  const std::vector<double> grad = analytic.to_double_vector();
  GradcheckResult r;
  // Nothing compared proves nothing (as max_scaled_diff and rel_l2 say): an empty input fails.
  if (input.numel() == 0) {
    r.max_rel_error = std::numeric_limits<double>::infinity();
    return r;
  }
  double* x = input.data<double>();
  std::vector<double> numeric(input.numel());
  for (int64_t i = 0; i < input.numel(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    numeric[i] = (plus - minus) / (2 * h);
  }
  for (int64_t i = 0; i < input.numel(); ++i) {
    if (!std::isfinite(grad[i]) || !std::isfinite(numeric[i])) {
      // A NaN or inf gradient (or loss) fails any EXPECT_LT on max_rel_error.
      r.max_rel_error = std::numeric_limits<double>::infinity();
      r.worst_index = i;
      r.analytic = grad[i];
      r.numeric = numeric[i];
      r.max_abs_grad = std::numeric_limits<double>::infinity();
      return r;
    }
    r.max_abs_grad = std::max({r.max_abs_grad, std::abs(grad[i]), std::abs(numeric[i])});
  }
  const double floor = std::max(floor_fraction * r.max_abs_grad, 1e-12);
  for (int64_t i = 0; i < input.numel(); ++i) {
    const double denom = std::max({std::abs(grad[i]), std::abs(numeric[i]), floor});
    const double err = std::abs(grad[i] - numeric[i]) / denom;
    if (err > r.max_rel_error || r.worst_index < 0) {
      r.max_rel_error = err;
      r.worst_index = i;
      r.analytic = grad[i];
      r.numeric = numeric[i];
    }
  }
  return r;
}

// A CPU tensor of N(0, std^2) draws from stream `seed` (same values for every dtype).
inline Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::kF64,
                            float std = 1.0f) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_normal(t, seed, 0.0f, std);
  return t;
}

// sum_i a_i b_i, in double.
inline double weighted_sum(const Tensor& a, const Tensor& b) {
  check_shape(b, a.shape(), "weighted_sum: b");
  const std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  double sum = 0;
  for (size_t i = 0; i < x.size(); ++i) sum += x[i] * y[i];
  return sum;
}

// a - b as an f64 tensor (e.g. what a kernel added into an accumulating gradient).
inline Tensor difference(const Tensor& a, const Tensor& b) {
  check_shape(b, a.shape(), "difference: b");
  std::vector<double> x = a.to_double_vector();
  const std::vector<double> y = b.to_double_vector();
  for (size_t i = 0; i < x.size(); ++i) x[i] -= y[i];
  return Tensor::from_vector<double>(a.shape(), x);
}

// max_i |a_i - b_i| / max(floor, max_i |b_i|). +infinity when either tensor holds a NaN or an
// infinity, so that EXPECT_LT(..., tol) fails (std::max would otherwise drop a NaN difference
// silently), when both are empty (nothing compared proves nothing), and on a nonzero difference
// over a zero scale.
inline double max_diff_over_scale(const Tensor& a, const Tensor& b, double floor,
                                  const char* what) {
  check_shape(a, b.shape(), what);
  const std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  if (x.empty()) return std::numeric_limits<double>::infinity();
  double diff = 0, scale = floor;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i]))
      return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(x[i] - y[i]));
    scale = std::max(scale, std::abs(y[i]));
  }
  if (scale > 0) return diff / scale;
  return diff > 0 ? std::numeric_limits<double>::infinity() : 0.0;
}

// max_i |a_i - b_i| / max(1, max_i |b_i|): the error of `a` on the scale of the reference `b`
// (max_diff_over_scale's infinities).
inline double max_scaled_diff(const Tensor& a, const Tensor& b) {
  return max_diff_over_scale(a, b, 1.0, "max_scaled_diff: a");
}

// max_i |a_i - b_i| / max_i |b_i|: the error on the reference's own scale, for quantities much
// smaller than 1 (index-loss gradients are O(weight / rows), dlogits O(1 / rows)), where
// max_scaled_diff's floor of 1 would accept O(1) relative errors, zeros and sign flips.
inline double max_diff_over_max(const Tensor& a, const Tensor& b) {
  return max_diff_over_scale(a, b, 0.0, "max_diff_over_max: a");
}

// |a - b| / max(1, |b|) for scalars (e.g. a recall against its reference): +infinity when either
// is NaN or infinite, so that EXPECT_LT(..., tol) fails.
inline double scaled_diff(double a, double b) {
  if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::infinity();
  return std::abs(a - b) / std::max(1.0, std::abs(b));
}

// max_scaled_diff for vectors of scalars (e.g. per-layer metrics): +infinity when the sizes differ
// or either holds a NaN or an infinity.
inline double max_scaled_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, scale = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i]))
      return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return diff / scale;
}

// True when the two tensors hold bit-identical values.
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         a.to_double_vector() == b.to_double_vector();
}

}  // namespace msa::test
