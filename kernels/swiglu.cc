// Device dispatch for kernels/swiglu.h.
#include "kernels/swiglu.h"

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/swiglu.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  MSA_CHECK(gate.ndim() == 2, "swiglu_forward: gate %s must be 2-D", gate.describe());
  check_shape(up, gate.shape(), "swiglu_forward: up");
  check_shape(out, gate.shape(), "swiglu_forward: out");
  check_same_device(gate, up, "gate", "up");
  check_same_device(gate, out, "gate", "out");
  if (gate.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::swiglu_forward(gate, up, out);
#endif
    return;
  }
  cpu::dispatch_floating(gate.dtype(), "swiglu_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(up, gate.dtype(), "swiglu_forward: up");
    check_dtype(out, gate.dtype(), "swiglu_forward: out");
    cpu::swiglu_forward<T>(gate.data<T>(), up.data<T>(), out.data<T>(), gate.numel());
  });
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  MSA_CHECK(gate.ndim() == 2, "swiglu_backward: gate %s must be 2-D", gate.describe());
  check_shape(dout, gate.shape(), "swiglu_backward: dout");
  check_shape(up, gate.shape(), "swiglu_backward: up");
  check_shape(dgate, gate.shape(), "swiglu_backward: dgate");
  check_shape(dup, gate.shape(), "swiglu_backward: dup");
  check_same_device(gate, dout, "gate", "dout");
  check_same_device(gate, up, "gate", "up");
  check_same_device(gate, dgate, "gate", "dgate");
  check_same_device(gate, dup, "gate", "dup");
  if (gate.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::swiglu_backward(dout, gate, up, dgate, dup);
#endif
    return;
  }
  cpu::dispatch_floating(gate.dtype(), "swiglu_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(dout, gate.dtype(), "swiglu_backward: dout");
    check_dtype(up, gate.dtype(), "swiglu_backward: up");
    check_dtype(dgate, gate.dtype(), "swiglu_backward: dgate");
    check_dtype(dup, gate.dtype(), "swiglu_backward: dup");
    cpu::swiglu_backward<T>(dout.data<T>(), gate.data<T>(), up.data<T>(), dgate.data<T>(),
                            dup.data<T>(), gate.numel());
  });
}

}  // namespace msa
