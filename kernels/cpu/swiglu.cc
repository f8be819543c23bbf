// silu(z) = z s(z) with s the logistic sigmoid, so silu'(z) = s(z) (1 + z (1 - s(z))).
#include "kernels/cpu/swiglu.h"

#include <cmath>

namespace msa::cpu {
namespace {

// 1 / (1 + e^-z): exp overflows to inf for very negative z and the result is then exactly 0.
template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

}  // namespace

template <class T>
void swiglu_forward(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

template <class T>
void swiglu_backward(const T* dout, const T* gate, const T* up, T* dgate, T* dup, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T z = gate[i], s = sigmoid(z);
    const T dsilu = s * (T(1) + z * (T(1) - s));
    const T g = dout[i];
    dgate[i] = g * up[i] * dsilu;
    dup[i] = g * z * s;
  }
}

template void swiglu_forward<float>(const float*, const float*, float*, int64_t);
template void swiglu_forward<double>(const double*, const double*, double*, int64_t);
template void swiglu_backward<float>(const float*, const float*, const float*, float*, float*,
                                     int64_t);
template void swiglu_backward<double>(const double*, const double*, const double*, double*, double*,
                                      int64_t);

}  // namespace msa::cpu
