// Device dispatch for kernels/cross_entropy.h.
#include "kernels/cross_entropy.h"

#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dtype_dispatch.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {
namespace {

// The mean of the counted rows' losses from their sum (0 when none counted).
void set_mean(CrossEntropyResult& result, double total) {
  result.loss = result.n_counted > 0 ? total / static_cast<double>(result.n_counted) : 0.0;
}

}  // namespace

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
    set_mean(result, total);
#endif
    return result;
  }
  cpu::dispatch_floating(logits.dtype(), "cross_entropy_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(lse, logits.dtype(), "cross_entropy_forward: lse");
    const double total =
        cpu::cross_entropy_forward<T>(logits.data<T>(), targets.data<int32_t>(), lse.data<T>(), N,
                                      V, ignore_index, &result.n_counted);
    set_mean(result, total);
  });
  return result;
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int ignore_index, int64_t n_counted, double dloss, Tensor& dlogits) {
  cross_entropy_slice_backward(logits, targets, lse, /*vocab_begin=*/0, ignore_index, n_counted,
                               dloss, dlogits);
}

void cross_entropy_slice_forward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                 Tensor& slice_lse, Tensor& target_logit) {
  MSA_CHECK(logits.ndim() == 2, "cross_entropy_slice_forward: logits %s must be 2-D",
            logits.describe());
  const int64_t N = logits.size(0), V = logits.size(1);
  check_shape(targets, {N}, "cross_entropy_slice_forward: targets");
  check_dtype(targets, DType::kI32, "cross_entropy_slice_forward: targets");
  check_shape(slice_lse, {N}, "cross_entropy_slice_forward: slice_lse");
  check_shape(target_logit, {N}, "cross_entropy_slice_forward: target_logit");
  check_same_device(logits, targets, "logits", "targets");
  check_same_device(logits, slice_lse, "logits", "slice_lse");
  check_same_device(logits, target_logit, "logits", "target_logit");
  if (logits.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::cross_entropy_slice_forward(logits, targets, vocab_begin, slice_lse, target_logit);
#endif
    return;
  }
  cpu::dispatch_floating(logits.dtype(), "cross_entropy_slice_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(slice_lse, logits.dtype(), "cross_entropy_slice_forward: slice_lse");
    check_dtype(target_logit, logits.dtype(), "cross_entropy_slice_forward: target_logit");
    cpu::cross_entropy_slice_forward<T>(logits.data<T>(), targets.data<int32_t>(),
                                        slice_lse.data<T>(), target_logit.data<T>(), N, V,
                                        vocab_begin);
  });
}

CrossEntropyResult cross_entropy_combine(const Tensor& all_lse, const Tensor& target_logit,
                                         const Tensor& targets, int64_t vocab_size,
                                         int ignore_index, Tensor& lse) {
  MSA_CHECK(all_lse.ndim() == 2, "cross_entropy_combine: all_lse %s must be [S, N]",
            all_lse.describe());
  const int64_t S = all_lse.size(0), N = all_lse.size(1);
  check_shape(target_logit, {N}, "cross_entropy_combine: target_logit");
  check_shape(targets, {N}, "cross_entropy_combine: targets");
  check_dtype(targets, DType::kI32, "cross_entropy_combine: targets");
  check_shape(lse, {N}, "cross_entropy_combine: lse");
  check_same_device(all_lse, target_logit, "all_lse", "target_logit");
  check_same_device(all_lse, targets, "all_lse", "targets");
  check_same_device(all_lse, lse, "all_lse", "lse");
  CrossEntropyResult result;
  if (all_lse.is_cuda()) {
#if MSA_HAS_CUDA
    const double total = cuda::cross_entropy_combine(all_lse, target_logit, targets, vocab_size,
                                                     ignore_index, lse, &result.n_counted);
    set_mean(result, total);
#endif
    return result;
  }
  cpu::dispatch_floating(all_lse.dtype(), "cross_entropy_combine", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(target_logit, all_lse.dtype(), "cross_entropy_combine: target_logit");
    check_dtype(lse, all_lse.dtype(), "cross_entropy_combine: lse");
    const double total = cpu::cross_entropy_combine<T>(all_lse.data<T>(), target_logit.data<T>(),
                                                       targets.data<int32_t>(), lse.data<T>(), S, N,
                                                       vocab_size, ignore_index, &result.n_counted);
    set_mean(result, total);
  });
  return result;
}

void cross_entropy_slice_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                  int64_t vocab_begin, int ignore_index, int64_t n_counted,
                                  double dloss, Tensor& dlogits) {
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
    cuda::cross_entropy_backward(logits, targets, lse, vocab_begin, ignore_index, n_counted, dloss,
                                 dlogits);
#endif
    return;
  }
  cpu::dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(lse, logits.dtype(), "cross_entropy_backward: lse");
    check_dtype(dlogits, logits.dtype(), "cross_entropy_backward: dlogits");
    cpu::cross_entropy_backward<T>(logits.data<T>(), targets.data<int32_t>(), lse.data<T>(), N, V,
                                   vocab_begin, ignore_index, n_counted, dloss, dlogits.data<T>());
  });
}

}  // namespace msa
