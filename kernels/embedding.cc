// Device dispatch for kernels/embedding.h.
#include "kernels/embedding.h"

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/embedding.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

void embedding_forward(const Tensor& tokens, const Tensor& table, Tensor& out) {
  MSA_CHECK(tokens.ndim() == 1, "embedding_forward: tokens %s must be 1-D", tokens.describe());
  MSA_CHECK(table.ndim() == 2, "embedding_forward: table %s must be 2-D", table.describe());
  const int64_t N = tokens.size(0), V = table.size(0), D = table.size(1);
  check_dtype(tokens, DType::kI32, "embedding_forward: tokens");
  check_shape(out, {N, D}, "embedding_forward: out");
  check_same_device(table, tokens, "table", "tokens");
  check_same_device(table, out, "table", "out");
  if (table.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::embedding_forward(tokens, table, /*vocab_begin=*/0, out);
#endif
    return;
  }
  cpu::dispatch_floating(table.dtype(), "embedding_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(out, table.dtype(), "embedding_forward: out");
    cpu::embedding_forward<T>(tokens.data<int32_t>(), table.data<T>(), out.data<T>(), N, V, D);
  });
}

void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dtable) {
  MSA_CHECK(tokens.ndim() == 1, "embedding_backward: tokens %s must be 1-D", tokens.describe());
  MSA_CHECK(dtable.ndim() == 2, "embedding_backward: dtable %s must be 2-D", dtable.describe());
  const int64_t N = tokens.size(0), V = dtable.size(0), D = dtable.size(1);
  check_dtype(tokens, DType::kI32, "embedding_backward: tokens");
  check_shape(dout, {N, D}, "embedding_backward: dout");
  check_same_device(dtable, tokens, "dtable", "tokens");
  check_same_device(dtable, dout, "dtable", "dout");
  if (dtable.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::embedding_backward(dout, tokens, /*vocab_begin=*/0, dtable);
#endif
    return;
  }
  cpu::dispatch_floating(dtable.dtype(), "embedding_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(dout, dtable.dtype(), "embedding_backward: dout");
    cpu::embedding_backward<T>(dout.data<T>(), tokens.data<int32_t>(), dtable.data<T>(), N, V, D);
  });
}

}  // namespace msa
