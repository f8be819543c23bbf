#include "model/context_parallel.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "core/check.h"

namespace msa {
namespace {

// [batch, n, ...] -> (batch, n, the elements of one token).
struct TokenLayout {
  int64_t batch, n, row;
};
TokenLayout token_layout(const Tensor& t, const char* op) {
  MSA_CHECK(t.is_cpu() && t.ndim() >= 2, "%s: %s must be a CPU tensor [batch, tokens, ...]", op,
            t.describe());
  const int64_t batch = t.size(0), n = t.size(1);
  return {batch, n, batch * n > 0 ? t.numel() / (batch * n) : 0};
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
  Tensor all = Tensor::empty({cp.size * local.numel()}, local.dtype());
  cp.comm->all_gather(local.view({local.numel()}), all);
  // all: [cp, batch, n, row] (rank-major) -> out: [batch, (rank + 1) n, row].
  Shape shape = local.shape();
  shape[1] = (cp.rank + 1) * l.n;
  Tensor out = Tensor::empty(shape, local.dtype());
  const size_t chunk = static_cast<size_t>(l.n * l.row) * dtype_size(local.dtype());
  const char* src = static_cast<const char*>(all.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  for (int64_t b = 0; b < l.batch; ++b)
    for (int c = 0; c <= cp.rank; ++c)
      std::memcpy(dst + (b * (cp.rank + 1) + c) * chunk, src + (c * l.batch + b) * chunk, chunk);
  return out;
}

Tensor cp_reduce_scatter_keys(const ContextParallel& cp, const Tensor& grad) {
  if (!cp.enabled()) return grad;
  const TokenLayout l = token_layout(grad, "cp_reduce_scatter_keys");
  MSA_CHECK(l.n % (cp.rank + 1) == 0, "cp_reduce_scatter_keys: %s is not (rank + 1) = %d shards",
            grad.describe(), cp.rank + 1);
  const int64_t n = l.n / (cp.rank + 1);
  // grad: [batch, (rank + 1) n, row] -> send: [cp, batch, n, row], zero for ranks after this one
  // (its queries see none of their keys).
  const int64_t local_numel = l.batch * n * l.row;
  Tensor send = Tensor::zeros({cp.size * local_numel}, grad.dtype());
  const size_t chunk = static_cast<size_t>(n * l.row) * dtype_size(grad.dtype());
  const char* src = static_cast<const char*>(grad.raw_data());
  char* dst = static_cast<char*>(send.raw_data());
  for (int64_t b = 0; b < l.batch; ++b)
    for (int c = 0; c <= cp.rank; ++c)
      std::memcpy(dst + (c * l.batch + b) * chunk, src + (b * (cp.rank + 1) + c) * chunk, chunk);
  Shape shape = grad.shape();
  shape[1] = n;
  Tensor out = Tensor::empty(shape, grad.dtype());
  Tensor flat = out.view({local_numel});
  cp.comm->reduce_scatter_sum(send, flat);
  return out;
}

}  // namespace msa
