// Device dispatch for kernels/norm.h.
#include "kernels/norm.h"

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/norm.h"
#include "kernels/matmul.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  MSA_CHECK(x.ndim() == 2, "rmsnorm_forward: x %s must be 2-D", x.describe());
  const int64_t N = x.size(0), D = x.size(1);
  check_shape(w, {D}, "rmsnorm_forward: w");
  check_shape(y, {N, D}, "rmsnorm_forward: y");
  check_shape(rstd, {N}, "rmsnorm_forward: rstd");
  check_same_device(x, w, "x", "w");
  check_same_device(x, y, "x", "y");
  check_same_device(x, rstd, "x", "rstd");
  if (x.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::rmsnorm_forward(x, w, eps, y, rstd);
#endif
    return;
  }
  cpu::dispatch_floating(x.dtype(), "rmsnorm_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(w, x.dtype(), "rmsnorm_forward: w");
    check_dtype(y, x.dtype(), "rmsnorm_forward: y");
    check_dtype(rstd, x.dtype(), "rmsnorm_forward: rstd");
    cpu::rmsnorm_forward<T>(x.data<T>(), w.data<T>(), eps, y.data<T>(), rstd.data<T>(), N, D);
  });
}

void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& w, double eps,
                         Tensor& sum, Tensor& y, Tensor& rstd) {
  MSA_CHECK(sum.ndim() == 2, "add_rmsnorm_forward: sum %s must be 2-D", sum.describe());
  check_shape(a, sum.shape(), "add_rmsnorm_forward: a");
  check_shape(b, sum.shape(), "add_rmsnorm_forward: b");
  check_same_device(sum, a, "sum", "a");
  check_same_device(sum, b, "sum", "b");
  if (sum.is_cuda()) {
#if MSA_HAS_CUDA
    const int64_t N = sum.size(0), D = sum.size(1);
    check_shape(w, {D}, "add_rmsnorm_forward: w");
    check_shape(y, {N, D}, "add_rmsnorm_forward: y");
    check_shape(rstd, {N}, "add_rmsnorm_forward: rstd");
    check_same_device(sum, w, "sum", "w");
    check_same_device(sum, y, "sum", "y");
    check_same_device(sum, rstd, "sum", "rstd");
    cuda::add_rmsnorm_forward(a, b, w, eps, sum, y, rstd);
#endif
    return;
  }
  add(a, b, sum);
  rmsnorm_forward(sum, w, eps, y, rstd);
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw, const Tensor& residual) {
  MSA_CHECK(x.ndim() == 2, "rmsnorm_backward: x %s must be 2-D", x.describe());
  const int64_t N = x.size(0), D = x.size(1);
  check_shape(dy, {N, D}, "rmsnorm_backward: dy");
  check_shape(w, {D}, "rmsnorm_backward: w");
  check_shape(rstd, {N}, "rmsnorm_backward: rstd");
  check_shape(dx, {N, D}, "rmsnorm_backward: dx");
  check_same_device(x, dy, "x", "dy");
  check_same_device(x, w, "x", "w");
  check_same_device(x, rstd, "x", "rstd");
  check_same_device(x, dx, "x", "dx");
  if (dw.defined()) {
    check_shape(dw, {D}, "rmsnorm_backward: dw");
    check_same_device(x, dw, "x", "dw");
  }
  if (residual.defined()) {
    check_shape(residual, {N, D}, "rmsnorm_backward: residual");
    check_same_device(x, residual, "x", "residual");
  }
  if (x.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::rmsnorm_backward(dy, x, w, rstd, dx, dw, residual);
#endif
    return;
  }
  cpu::dispatch_floating(x.dtype(), "rmsnorm_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(dy, x.dtype(), "rmsnorm_backward: dy");
    check_dtype(w, x.dtype(), "rmsnorm_backward: w");
    check_dtype(rstd, x.dtype(), "rmsnorm_backward: rstd");
    check_dtype(dx, x.dtype(), "rmsnorm_backward: dx");
    T* dw_data = nullptr;
    if (dw.defined()) {
      check_dtype(dw, x.dtype(), "rmsnorm_backward: dw");
      dw_data = dw.data<T>();
    }
    const T* residual_data = nullptr;
    if (residual.defined()) {
      check_dtype(residual, x.dtype(), "rmsnorm_backward: residual");
      residual_data = residual.data<T>();
    }
    cpu::rmsnorm_backward<T>(dy.data<T>(), x.data<T>(), w.data<T>(), rstd.data<T>(), residual_data,
                             dx.data<T>(), dw_data, N, D);
  });
}

}  // namespace msa
