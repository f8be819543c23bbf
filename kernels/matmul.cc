// Device dispatch for kernels/matmul.h.
#include "kernels/matmul.h"

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/matmul.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  MSA_CHECK(x.ndim() == 2 && w.ndim() == 2, "linear_forward: x %s and w %s must be 2-D",
            x.describe(), w.describe());
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  check_shape(w, {M, K}, "linear_forward: w");
  check_shape(y, {N, M}, "linear_forward: y");
  check_same_device(x, w, "x", "w");
  check_same_device(x, y, "x", "y");
  if (bias.defined()) {
    check_shape(bias, {M}, "linear_forward: bias");
    check_same_device(x, bias, "x", "bias");
  }
  if (x.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::linear_forward(x, w, bias, y);
#endif
    return;
  }
  cpu::dispatch_floating(x.dtype(), "linear_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(w, x.dtype(), "linear_forward: w");
    check_dtype(y, x.dtype(), "linear_forward: y");
    const T* b = nullptr;
    if (bias.defined()) {
      check_dtype(bias, x.dtype(), "linear_forward: bias");
      b = bias.data<T>();
    }
    cpu::linear_forward<T>(x.data<T>(), w.data<T>(), b, y.data<T>(), N, K, M);
  });
}

void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw,
                     Tensor& dbias, DxWrite dx_write) {
  MSA_CHECK(x.ndim() == 2 && w.ndim() == 2, "linear_backward: x %s and w %s must be 2-D",
            x.describe(), w.describe());
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  check_shape(w, {M, K}, "linear_backward: w");
  check_shape(dy, {N, M}, "linear_backward: dy");
  check_same_device(x, w, "x", "w");
  check_same_device(x, dy, "x", "dy");
  if (dx.defined()) {
    check_shape(dx, {N, K}, "linear_backward: dx");
    check_same_device(x, dx, "x", "dx");
  }
  if (dw.defined()) {
    check_shape(dw, {M, K}, "linear_backward: dw");
    check_same_device(x, dw, "x", "dw");
  }
  if (dbias.defined()) {
    check_shape(dbias, {M}, "linear_backward: dbias");
    check_same_device(x, dbias, "x", "dbias");
  }
  if (x.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::linear_backward(dy, x, w, dx, dw, dbias, dx_write == DxWrite::kAccumulate);
#endif
    return;
  }
  cpu::dispatch_floating(x.dtype(), "linear_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(w, x.dtype(), "linear_backward: w");
    check_dtype(dy, x.dtype(), "linear_backward: dy");
    // An undefined optional output becomes a null pointer: the CPU kernel skips it.
    auto optional_out = [&](Tensor& t, const char* name) -> T* {
      if (!t.defined()) return nullptr;
      check_dtype(t, x.dtype(), name);
      return t.data<T>();
    };
    cpu::linear_backward<T>(dy.data<T>(), x.data<T>(), w.data<T>(),
                            optional_out(dx, "linear_backward: dx"),
                            optional_out(dw, "linear_backward: dw"),
                            optional_out(dbias, "linear_backward: dbias"), N, K, M,
                            dx_write == DxWrite::kAccumulate);
  });
}

void add_inplace(Tensor& y, const Tensor& x) { add(y, x, y); }

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  check_shape(a, out.shape(), "add: a");
  check_shape(b, out.shape(), "add: b");
  check_same_device(out, a, "out", "a");
  check_same_device(out, b, "out", "b");
  if (out.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::add(a, b, out);
#endif
    return;
  }
  cpu::dispatch_floating(out.dtype(), "add", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(a, out.dtype(), "add: a");
    check_dtype(b, out.dtype(), "add: b");
    cpu::add<T>(a.data<T>(), b.data<T>(), out.data<T>(), out.numel());
  });
}

void scale_inplace(Tensor& y, double a) {
  if (y.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::scale_inplace(y, a);
#endif
    return;
  }
  cpu::dispatch_floating(y.dtype(), "scale_inplace", [&](auto zero) {
    using T = decltype(zero);
    cpu::scale_inplace<T>(y.data<T>(), static_cast<T>(a), y.numel());
  });
}

}  // namespace msa
