// One AdamW step, evaluated in double per element whatever the storage type: the moments and the
// parameter are rounded to T once, when stored.
#include "kernels/cpu/adamw.h"

#include <cmath>

namespace msa::cpu {

template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWHyper& h) {
  const double step = static_cast<double>(h.step);
  const double bias1 = 1.0 - std::pow(h.beta1, step);
  const double bias2 = 1.0 - std::pow(h.beta2, step);
  for (int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(grad[i]) * h.grad_scale;
    const double m_i = h.beta1 * static_cast<double>(m[i]) + (1.0 - h.beta1) * g;
    const double v_i = h.beta2 * static_cast<double>(v[i]) + (1.0 - h.beta2) * g * g;
    const double p = static_cast<double>(param[i]);
    const double update = (m_i / bias1) / (std::sqrt(v_i / bias2) + h.eps) + h.weight_decay * p;
    m[i] = static_cast<T>(m_i);
    v[i] = static_cast<T>(v_i);
    param[i] = static_cast<T>(p - h.lr * update);
  }
}

template <class T>
double sum_of_squares(const T* x, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return sum;
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, const AdamWHyper&);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t,
                                   const AdamWHyper&);
template double sum_of_squares<float>(const float*, int64_t);
template double sum_of_squares<double>(const double*, int64_t);

}  // namespace msa::cpu
