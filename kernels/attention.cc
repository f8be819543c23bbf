// Device dispatch for kernels/attention.h.
#include "kernels/attention.h"

#include "core/deterministic.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dtype_dispatch.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/attention_cuda.h"
#endif

namespace msa {
namespace {

// Reads the dimensions from q and k and checks q, k, v, out (or dout) and lse against them.
cpu::AttentionDims check_attention_args(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& out, const Tensor& lse, const char* op) {
  MSA_CHECK(q.ndim() == 4 && k.ndim() == 4, "%s: q %s and k %s must be 4-D", op, q.describe(),
            k.describe());
  cpu::AttentionDims dims{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  dims.kv_seq = k.size(1);
  MSA_CHECK(dims.groups > 0 && dims.heads % dims.groups == 0,
            "%s: H = %d query heads is not a multiple of G = %d KV heads", op, dims.heads,
            dims.groups);
  MSA_CHECK(dims.kv_seq >= dims.seq, "%s: q %s has more tokens than k %s", op, q.describe(),
            k.describe());
  check_shape(k, {dims.batch, dims.kv_seq, dims.groups, dims.dim}, "attention: k");
  check_shape(v, k.shape(), "attention: v");
  check_shape(out, q.shape(), "attention: out");
  check_shape(lse, {dims.batch, dims.heads, dims.seq}, "attention: lse");
  check_same_device(q, k, "q", "k");
  check_same_device(q, v, "q", "v");
  check_same_device(q, out, "q", "out");
  check_same_device(q, lse, "q", "lse");
  return dims;
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor& out,
                       Tensor& lse) {
  const cpu::AttentionDims dims = check_attention_args(q, k, v, out, lse, "attention_forward");
  if (q.is_cuda()) {
#if MSA_HAS_CUDA
    // cuDNN's fused flash attention takes bf16; f32 (tests) and refused shapes use the fallback.
    if (q.dtype() == DType::kBF16 && !cuda::attention_fallback_forced() &&
        cuda::cudnn_attention_forward(q, k, v, scale, out, lse, dims))
      return;
    cuda::fallback_attention_forward(q, k, v, scale, out, lse, dims);
#endif
    return;
  }
  cpu::dispatch_floating(q.dtype(), "attention_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(k, q.dtype(), "attention_forward: k");
    check_dtype(v, q.dtype(), "attention_forward: v");
    check_dtype(out, q.dtype(), "attention_forward: out");
    check_dtype(lse, q.dtype(), "attention_forward: lse");
    cpu::attention_forward<T>(q.data<T>(), k.data<T>(), v.data<T>(), scale, out.data<T>(),
                              lse.data<T>(), dims);
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                        Tensor& dv) {
  const cpu::AttentionDims dims = check_attention_args(q, k, v, out, lse, "attention_backward");
  check_shape(dout, q.shape(), "attention_backward: dout");
  check_shape(dq, q.shape(), "attention_backward: dq");
  check_shape(dk, k.shape(), "attention_backward: dk");
  check_shape(dv, v.shape(), "attention_backward: dv");
  check_same_device(q, dout, "q", "dout");
  check_same_device(q, dq, "q", "dq");
  check_same_device(q, dk, "q", "dk");
  check_same_device(q, dv, "q", "dv");
  if (q.is_cuda()) {
#if MSA_HAS_CUDA
    // cuDNN's fused backward accumulates dQ with f32 atomics (run-to-run last-bit differences);
    // deterministic mode takes the fallback's backward, which sums in a fixed order (slower).
    if (q.dtype() == DType::kBF16 && !cuda::attention_fallback_forced() && !deterministic() &&
        cuda::cudnn_attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv, dims))
      return;
    cuda::fallback_attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv, dims);
#endif
    return;
  }
  cpu::dispatch_floating(q.dtype(), "attention_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(dout, q.dtype(), "attention_backward: dout");
    check_dtype(k, q.dtype(), "attention_backward: k");
    check_dtype(v, q.dtype(), "attention_backward: v");
    check_dtype(out, q.dtype(), "attention_backward: out");
    check_dtype(lse, q.dtype(), "attention_backward: lse");
    check_dtype(dq, q.dtype(), "attention_backward: dq");
    check_dtype(dk, q.dtype(), "attention_backward: dk");
    check_dtype(dv, q.dtype(), "attention_backward: dv");
    cpu::attention_backward<T>(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(),
                               lse.data<T>(), scale, dq.data<T>(), dk.data<T>(), dv.data<T>(),
                               dims);
  });
}

}  // namespace msa
