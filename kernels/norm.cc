// Device dispatch for kernels/norm.h.
#include "kernels/norm.h"

#include <string>

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/norm.h"
#include "kernels/matmul.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

namespace {

// The shapes and devices of a forward norm's operands: x [N, D], w [D], y [N, D], rstd [N].
void check_forward_operands(const Tensor& x, const Tensor& w, const Tensor& y, const Tensor& rstd,
                            const std::string& op) {
  MSA_CHECK(x.ndim() == 2, "%s: input %s must be 2-D", op, x.describe());
  const int64_t N = x.size(0), D = x.size(1);
  check_shape(w, {D}, (op + ": w").c_str());
  check_shape(y, {N, D}, (op + ": y").c_str());
  check_shape(rstd, {N}, (op + ": rstd").c_str());
  check_same_device(x, w, "x", "w");
  check_same_device(x, y, "x", "y");
  check_same_device(x, rstd, "x", "rstd");
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  check_forward_operands(x, w, y, rstd, "rmsnorm_forward");
  const int64_t N = x.size(0), D = x.size(1);
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

void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& w, double eps, Tensor& sum,
                         Tensor& y, Tensor& rstd) {
  check_forward_operands(sum, w, y, rstd, "add_rmsnorm_forward");
  check_shape(a, sum.shape(), "add_rmsnorm_forward: a");
  check_shape(b, sum.shape(), "add_rmsnorm_forward: b");
  check_same_device(sum, a, "sum", "a");
  check_same_device(sum, b, "sum", "b");
  if (sum.is_cuda()) {
#if MSA_HAS_CUDA
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
