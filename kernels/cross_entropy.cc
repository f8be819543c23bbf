// Device dispatch for kernels/cross_entropy.h.
#include "kernels/cross_entropy.h"

#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dtype_dispatch.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                         int ignore_index, Tensor& lse) {
  MSA_CHECK(logits.ndim() == 2, "cross_entropy_forward: logits %s must be 2-D", logits.describe());
  const int64_t N = logits.size(0), V = logits.size(1);
  check_shape(targets, {N}, "cross_entropy_forward: targets");
  check_dtype(targets, DType::kI32, "cross_entropy_forward: targets");
  check_shape(lse, {N}, "cross_entropy_forward: lse");
  check_same_device(logits, targets, "logits", "targets");
  check_same_device(logits, lse, "logits", "lse");
  CrossEntropyResult result;
  if (logits.is_cuda()) {
#if MSA_HAS_CUDA
    const double total =
        cuda::cross_entropy_forward(logits, targets, ignore_index, lse, &result.n_counted);
    result.loss = result.n_counted > 0 ? total / static_cast<double>(result.n_counted) : 0.0;
#endif
    return result;
  }
  cpu::dispatch_floating(logits.dtype(), "cross_entropy_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(lse, logits.dtype(), "cross_entropy_forward: lse");
    const double total =
        cpu::cross_entropy_forward<T>(logits.data<T>(), targets.data<int32_t>(), lse.data<T>(), N,
                                      V, ignore_index, &result.n_counted);
    result.loss = result.n_counted > 0 ? total / static_cast<double>(result.n_counted) : 0.0;
  });
  return result;
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int ignore_index, int64_t n_counted, double dloss, Tensor& dlogits) {
  MSA_CHECK(logits.ndim() == 2, "cross_entropy_backward: logits %s must be 2-D", logits.describe());
  const int64_t N = logits.size(0), V = logits.size(1);
  check_shape(targets, {N}, "cross_entropy_backward: targets");
  check_dtype(targets, DType::kI32, "cross_entropy_backward: targets");
  check_shape(lse, {N}, "cross_entropy_backward: lse");
  check_shape(dlogits, {N, V}, "cross_entropy_backward: dlogits");
  check_same_device(logits, targets, "logits", "targets");
  check_same_device(logits, lse, "logits", "lse");
  check_same_device(logits, dlogits, "logits", "dlogits");
  MSA_CHECK(n_counted >= 0, "cross_entropy_backward: n_counted %d < 0", n_counted);
  if (logits.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::cross_entropy_backward(logits, targets, lse, ignore_index, n_counted, dloss, dlogits);
#endif
    return;
  }
  cpu::dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(lse, logits.dtype(), "cross_entropy_backward: lse");
    check_dtype(dlogits, logits.dtype(), "cross_entropy_backward: dlogits");
    cpu::cross_entropy_backward<T>(logits.data<T>(), targets.data<int32_t>(), lse.data<T>(), N, V,
                                   ignore_index, n_counted, dloss, dlogits.data<T>());
  });
}

}  // namespace msa
