// Device dispatch for kernels/adamw.h.
#include "kernels/adamw.h"

#include <cmath>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/dtype_dispatch.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  check_shape(grad, param.shape(), "adamw_update: grad");
  check_shape(m, param.shape(), "adamw_update: m");
  check_shape(v, param.shape(), "adamw_update: v");
  check_same_device(param, grad, "param", "grad");
  check_same_device(param, m, "param", "m");
  check_same_device(param, v, "param", "v");
  MSA_CHECK(h.step >= 1, "adamw_update: step %d must be >= 1 (1-based)", h.step);
  if (param.is_cuda()) {
#if MSA_HAS_CUDA
    const double step = static_cast<double>(h.step);
    const cuda::AdamWStep s{static_cast<float>(h.lr), static_cast<float>(h.beta1),
                            static_cast<float>(h.beta2), static_cast<float>(h.eps),
                            static_cast<float>(h.weight_decay), static_cast<float>(h.grad_scale),
                            static_cast<float>(1.0 - std::pow(h.beta1, step)),
                            static_cast<float>(1.0 - std::pow(h.beta2, step))};
    cuda::adamw_update(param, grad, m, v, s);
#endif
    return;
  }
  // fp32 is the contract; the CPU also takes f64 for gradient checks and exact comparisons.
  cpu::dispatch_floating(param.dtype(), "adamw_update", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(grad, param.dtype(), "adamw_update: grad");
    check_dtype(m, param.dtype(), "adamw_update: m");
    check_dtype(v, param.dtype(), "adamw_update: v");
    cpu::adamw_update<T>(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), param.numel(),
                         h);
  });
}

double sum_of_squares(const Tensor& t) {
  if (t.is_cuda()) {
#if MSA_HAS_CUDA
    return cuda::sum_of_squares(t);
#endif
  }
  double result = 0;
  cpu::dispatch_floating(t.dtype(), "sum_of_squares", [&](auto zero) {
    using T = decltype(zero);
    result = cpu::sum_of_squares<T>(t.data<T>(), t.numel());
  });
  return result;
}

}  // namespace msa
