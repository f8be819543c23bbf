// Device dispatch for kernels/adamw.h.
#include "kernels/adamw.h"

#include <cmath>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/dtype_dispatch.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

namespace {

void check_adamw_args(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                      const AdamWHyper& h) {
  check_shape(grad, param.shape(), "adamw_update: grad");
  check_shape(m, param.shape(), "adamw_update: m");
  check_shape(v, param.shape(), "adamw_update: v");
  check_same_device(param, grad, "param", "grad");
  check_same_device(param, m, "param", "m");
  check_same_device(param, v, "param", "v");
  MSA_CHECK(h.step >= 1, "adamw_update: step %d must be >= 1 (1-based)", h.step);
}

#if MSA_HAS_CUDA
cuda::AdamWStep cuda_step(const AdamWHyper& h) {
  const double step = static_cast<double>(h.step);
  return {static_cast<float>(h.lr),
          static_cast<float>(h.beta1),
          static_cast<float>(h.beta2),
          static_cast<float>(h.eps),
          static_cast<float>(h.weight_decay),
          static_cast<float>(h.grad_scale),
          static_cast<float>(1.0 - std::pow(h.beta1, step)),
          static_cast<float>(1.0 - std::pow(h.beta2, step))};
}
#endif

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  check_adamw_args(param, grad, m, v, h);
  if (param.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::adamw_update(param, grad, m, v, cuda_step(h), nullptr);
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

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h,
                  Tensor& compute_copy) {
  check_adamw_args(param, grad, m, v, h);
  check_shape(compute_copy, param.shape(), "adamw_update: compute_copy");
  check_same_device(param, compute_copy, "param", "compute_copy");
  if (param.is_cuda() && compute_copy.dtype() == DType::kBF16) {
#if MSA_HAS_CUDA
    cuda::adamw_update(param, grad, m, v, cuda_step(h), &compute_copy);
#endif
    return;
  }
  adamw_update(param, grad, m, v, h);
  compute_copy.copy_from(param.to(compute_copy.dtype()));
}

std::vector<double> sums_of_squares(const std::vector<Tensor>& tensors) {
  if (!tensors.empty() && tensors[0].is_cuda()) {
    for (const Tensor& t : tensors) check_same_device(tensors[0], t, "tensors[0]", "tensor");
#if MSA_HAS_CUDA
    return cuda::sums_of_squares(tensors);
#endif
  }
  std::vector<double> out;
  for (const Tensor& t : tensors) out.push_back(sum_of_squares(t));
  return out;
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
