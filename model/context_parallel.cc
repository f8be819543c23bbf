#include "model/context_parallel.h"

#include "absl/strings/str_format.h"
#include "core/check.h"

namespace msa {
namespace {

// [batch, n, ...] -> (batch, n, the elements of one token).
struct TokenLayout {
  int64_t batch, n, row;
};
TokenLayout token_layout(const Tensor& t, const char* op) {
  MSA_CHECK(t.ndim() >= 2, "%s: %s must be [batch, tokens, ...]", op, t.describe());
  const int64_t batch = t.size(0), n = t.size(1);
  return {batch, n, batch * n > 0 ? t.numel() / (batch * n) : 0};
}

// Copies chunk `from` of src [chunks, size] into chunk `to` of dst [chunks, size] (either device:
// stream-ordered device copies on CUDA).
void copy_chunk(const Tensor& src, int64_t from, Tensor& dst, int64_t to) {
  Tensor d = dst.slice0(to, to + 1);
  d.copy_from(src.slice0(from, from + 1));
}

}  // namespace

ContextParallel context_parallel_of(Communicator* comm) {
  ContextParallel cp;
  if (comm == nullptr) return cp;
  cp.comm = comm;
  cp.rank = comm->rank();
  cp.size = comm->size();
  return cp;
}

absl::Status check_context_parallel(const ModelConfig& config, int cp, int64_t seq_len) {
  if (cp < 1) return absl::InvalidArgumentError(absl::StrFormat("invalid --cp: %d < 1", cp));
  if (seq_len % cp != 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --cp: --seq_len %d is not a multiple of --cp %d (each rank holds seq_len / cp "
        "tokens)",
        seq_len, cp));
  if (config.any_msa() && (seq_len / cp) % config.msa.block_size != 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --cp: --seq_len / --cp = %d / %d = %d tokens per rank is not a multiple of the "
        "MSA block size %d (a shard must hold whole blocks)",
        seq_len, cp, seq_len / cp, config.msa.block_size));
  return absl::OkStatus();
}

Tensor cp_gather_keys(const ContextParallel& cp, const Tensor& local) {
  if (!cp.enabled()) return local;
  const TokenLayout l = token_layout(local, "cp_gather_keys");
  const Device dev = local.device();
  Tensor all = Tensor::empty({cp.size * local.numel()}, local.dtype(), dev);
  cp.comm->all_gather(local.view({local.numel()}), all);
  // all: [cp, batch, n, row] (rank-major) -> out: [batch, (rank + 1) n, row].
  Shape shape = local.shape();
  shape[1] = (cp.rank + 1) * l.n;
  // One sequence (the long-context case): the first rank + 1 shards are the output already.
  if (l.batch == 1) return all.slice0(0, (cp.rank + 1) * local.numel()).view(shape);
  Tensor out = Tensor::empty(shape, local.dtype(), dev);
  const Tensor src = all.view({cp.size * l.batch, l.n * l.row});
  Tensor dst = out.view({l.batch * (cp.rank + 1), l.n * l.row});
  for (int64_t b = 0; b < l.batch; ++b)
    for (int c = 0; c <= cp.rank; ++c) copy_chunk(src, c * l.batch + b, dst, b * (cp.rank + 1) + c);
  return out;
}

Tensor cp_reduce_scatter_keys(const ContextParallel& cp, const Tensor& grad) {
  if (!cp.enabled()) return grad;
  const TokenLayout l = token_layout(grad, "cp_reduce_scatter_keys");
  MSA_CHECK(l.n % (cp.rank + 1) == 0, "cp_reduce_scatter_keys: %s is not (rank + 1) = %d shards",
            grad.describe(), cp.rank + 1);
  const int64_t n = l.n / (cp.rank + 1);
  const Device dev = grad.device();
  // bf16 gradients (CUDA) are summed in f32: each rank's part was rounded once already.
  const DType sum_dtype = grad.dtype() == DType::kBF16 ? DType::kF32 : grad.dtype();
  const Tensor g = grad.dtype() == sum_dtype ? grad : grad.to(sum_dtype);
  // grad: [batch, (rank + 1) n, row] -> send: [cp, batch, n, row], zero for ranks after this one
  // (its queries see none of their keys).
  const int64_t local_numel = l.batch * n * l.row;
  Tensor send = Tensor::zeros({cp.size * local_numel}, sum_dtype, dev);
  if (l.batch == 1) {
    Tensor head = send.slice0(0, (cp.rank + 1) * local_numel);
    head.copy_from(g.view({(cp.rank + 1) * local_numel}));
  } else {
    const Tensor src = g.view({l.batch * (cp.rank + 1), n * l.row});
    Tensor dst = send.view({cp.size * l.batch, n * l.row});
    for (int64_t b = 0; b < l.batch; ++b)
      for (int c = 0; c <= cp.rank; ++c)
        copy_chunk(src, b * (cp.rank + 1) + c, dst, c * l.batch + b);
  }
  Shape shape = grad.shape();
  shape[1] = n;
  Tensor out = Tensor::empty(shape, sum_dtype, dev);
  Tensor flat = out.view({local_numel});
  cp.comm->reduce_scatter_sum(send, flat);
  return out.dtype() == grad.dtype() ? out : out.to(grad.dtype());
}

}  // namespace msa
