// RMSNorm, y_i = x_i r w_i with r = (mean_j x_j^2 + eps)^(-1/2). Since dr/dx_i = -r^3 x_i / D,
//   dx_i = r (w_i dy_i) - r^3 x_i / D * sum_j (w_j dy_j x_j),   dw_i += sum_rows dy_i x_i r.
#include "kernels/cpu/norm.h"

#include <cmath>

namespace msa::cpu {

template <class T>
void rmsnorm_forward(const T* x, const T* w, double eps, T* y, T* rstd, int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x_row = x + n * D;
    T* y_row = y + n * D;
    T sum_sq = 0;
    for (int64_t i = 0; i < D; ++i) sum_sq += x_row[i] * x_row[i];
    const T r = T(1) / std::sqrt(sum_sq / static_cast<T>(D) + static_cast<T>(eps));
    for (int64_t i = 0; i < D; ++i) y_row[i] = x_row[i] * r * w[i];
    rstd[n] = r;
  }
}

template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, const T* residual, T* dx,
                      T* dw, int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    const T* dy_row = dy + n * D;
    const T* x_row = x + n * D;
    const T* residual_row = residual != nullptr ? residual + n * D : nullptr;
    T* dx_row = dx + n * D;
    const T r = rstd[n];
    T dot = 0;  // sum_j w_j dy_j x_j
    for (int64_t i = 0; i < D; ++i) dot += w[i] * dy_row[i] * x_row[i];
    const T coef = r * r * r * dot / static_cast<T>(D);
    if (dw) {  // before dx is written: dx may alias dy
      for (int64_t i = 0; i < D; ++i) dw[i] += dy_row[i] * x_row[i] * r;
    }
    for (int64_t i = 0; i < D; ++i) {
      // Rounded to T before the residual is added: the same numbers as a separate add.
      const T v = r * w[i] * dy_row[i] - coef * x_row[i];
      dx_row[i] = residual_row != nullptr ? v + residual_row[i] : v;
    }
  }
}

#define MSA_INSTANTIATE(T)                                                                   \
  template void rmsnorm_forward<T>(const T*, const T*, double, T*, T*, int64_t, int64_t);    \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*,  \
                                    int64_t, int64_t);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
