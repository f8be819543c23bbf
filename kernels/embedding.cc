// Device dispatch for kernels/embedding.h.
#include "kernels/embedding.h"

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/embedding.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {
namespace {

// rows: out [N, D] (forward) or dout (backward), named rows_name in messages.
void check_args(const Tensor& tokens, const Tensor& table, const Tensor& rows, const char* op,
                const char* rows_name) {
  MSA_CHECK(tokens.ndim() == 1, "%s: tokens %s must be 1-D", op, tokens.describe());
  MSA_CHECK(table.ndim() == 2, "%s: table %s must be 2-D", op, table.describe());
  check_dtype(tokens, DType::kI32, "embedding: tokens");
  check_shape(rows, {tokens.size(0), table.size(1)}, rows_name);
  check_same_device(table, tokens, "table", "tokens");
  check_same_device(table, rows, "table", rows_name);
}

// The unsliced lookup's contract: every token is a row of the table (checked on the host only;
// a CUDA check would cost a synchronization). Malformed tokens are left to check_args.
void check_tokens_in_table(const Tensor& tokens, const Tensor& table, const char* op) {
  if (!tokens.is_cpu() || tokens.ndim() != 1 || tokens.dtype() != DType::kI32) return;
  if (table.ndim() != 2) return;
  const int64_t V = table.size(0);
  const int32_t* t = tokens.data<int32_t>();
  for (int64_t n = 0; n < tokens.size(0); ++n)
    MSA_CHECK(t[n] >= 0 && t[n] < V, "%s: tokens[%d] = %d outside [0, %d)", op, n, t[n], V);
}

}  // namespace

void embedding_forward(const Tensor& tokens, const Tensor& table, int64_t vocab_begin,
                       Tensor& out) {
  check_args(tokens, table, out, "embedding_forward", "embedding_forward: out");
  const int64_t N = tokens.size(0), V = table.size(0), D = table.size(1);
  if (table.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::embedding_forward(tokens, table, vocab_begin, out);
#endif
    return;
  }
  cpu::dispatch_floating(table.dtype(), "embedding_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(out, table.dtype(), "embedding_forward: out");
    cpu::embedding_forward<T>(tokens.data<int32_t>(), table.data<T>(), out.data<T>(), N, V, D,
                              vocab_begin);
  });
}

void embedding_backward(const Tensor& dout, const Tensor& tokens, int64_t vocab_begin,
                        Tensor& dtable) {
  check_args(tokens, dtable, dout, "embedding_backward", "embedding_backward: dout");
  const int64_t N = tokens.size(0), V = dtable.size(0), D = dtable.size(1);
  if (dtable.is_cuda()) {
#if MSA_HAS_CUDA
    cuda::embedding_backward(dout, tokens, vocab_begin, dtable);
#endif
    return;
  }
  cpu::dispatch_floating(dtable.dtype(), "embedding_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(dout, dtable.dtype(), "embedding_backward: dout");
    cpu::embedding_backward<T>(dout.data<T>(), tokens.data<int32_t>(), dtable.data<T>(), N, V, D,
                               vocab_begin);
  });
}

void embedding_forward(const Tensor& tokens, const Tensor& table, Tensor& out) {
  check_tokens_in_table(tokens, table, "embedding_forward");
  embedding_forward(tokens, table, /*vocab_begin=*/0, out);
}

void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dtable) {
  check_tokens_in_table(tokens, dtable, "embedding_backward");
  embedding_backward(dout, tokens, /*vocab_begin=*/0, dtable);
}

}  // namespace msa
