// Device dispatch for kernels/rope.h.
#include "kernels/rope.h"

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/rope.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {
namespace {

// Checks shared by forward and backward; `in` is x (forward) or dy (backward).
void check_rope_args(const Tensor& in, const Tensor& out, const char* op) {
  MSA_CHECK(in.ndim() == 4, "%s: input %s must be [batch, T, n_heads, d]", op, in.describe());
  MSA_CHECK(in.size(3) % 2 == 0, "%s: head dim %d must be even", op, in.size(3));
  check_shape(out, in.shape(), op);
  check_same_device(in, out, "input", "output");
}

void rope_apply(const Tensor& in, double theta, Tensor& out, bool inverse, const char* op) {
  check_rope_args(in, out, op);
  if (in.is_cuda()) {
#if MSA_HAS_CUDA
    check_dtype(in, DType::kBF16, op);
    check_dtype(out, DType::kBF16, op);
    cuda::rope_rotate(in, theta, inverse, out);
#endif
    return;
  }
  cpu::dispatch_floating(in.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    check_dtype(out, in.dtype(), op);
    cpu::rope_rotate<T>(in.data<T>(), out.data<T>(), in.size(0), in.size(1), in.size(2), in.size(3),
                        theta, inverse);
  });
}

}  // namespace

void rope_forward(const Tensor& x, double theta, Tensor& y) {
  rope_apply(x, theta, y, /*inverse=*/false, "rope_forward");
}

void rope_backward(const Tensor& dy, double theta, Tensor& dx) {
  rope_apply(dy, theta, dx, /*inverse=*/true, "rope_backward");
}

}  // namespace msa
