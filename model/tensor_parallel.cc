#include "model/tensor_parallel.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"

namespace msa {
namespace {

int split_dim(TpSplit split) { return split == TpSplit::kCols ? 1 : 0; }

}  // namespace

TensorParallel tensor_parallel_of(Communicator* comm) {
  TensorParallel tp;
  if (comm != nullptr) {
    tp.comm = comm;
    tp.rank = comm->rank();
    tp.size = comm->size();
  }
  return tp;
}

absl::Status check_tensor_parallel(const ModelConfig& c, int tp) {
  auto bad = [&](const char* what, int64_t n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --tp: %d does not divide %s = %d (tensor parallelism splits it evenly)", tp, what,
        n));
  };
  if (tp < 1) return absl::InvalidArgumentError(absl::StrFormat("invalid --tp: %d is < 1", tp));
  if (c.n_kv_heads % tp != 0) return bad("n_kv_heads (--n_kv_heads)", c.n_kv_heads);
  if (c.ffn_dim % tp != 0) return bad("ffn_dim (--ffn_dim)", c.ffn_dim);
  if (c.vocab_size % tp != 0) return bad("vocab_size (--vocab_size, pad it)", c.vocab_size);
  return absl::OkStatus();
}

ModelConfig local_block_config(const ModelConfig& config, int tp) {
  MSA_CHECK(check_tensor_parallel(config, tp).ok(), "local_block_config: tp %d does not fit", tp);
  ModelConfig c = config;
  c.n_heads /= tp;
  c.n_kv_heads /= tp;
  c.ffn_dim /= tp;
  c.vocab_size /= tp;
  return c;
}

std::vector<ParamSpec> local_param_specs(const ModelConfig& config, int tp) {
  std::vector<ParamSpec> specs = model_param_specs(config);
  if (tp == 1) return specs;
  for (ParamSpec& s : specs) {
    if (s.tp_split == TpSplit::kReplicated) continue;
    const int dim = split_dim(s.tp_split);
    MSA_CHECK(s.shape[dim] % tp == 0, "parameter %s: dim %d of %s is not divisible by tp %d",
              s.name, dim, shape_string(s.shape), tp);
    s.shape[dim] /= tp;
  }
  return specs;
}

Shape full_shape(const Shape& local, TpSplit split, int tp) {
  Shape s = local;
  if (split != TpSplit::kReplicated) s[split_dim(split)] *= tp;
  return s;
}

Tensor tp_slice(const Tensor& full, TpSplit split, int rank, int tp) {
  const Tensor src = full.is_cpu() ? full : full.to(Device::kCPU);
  if (split == TpSplit::kReplicated || tp == 1) return src.clone();
  if (split == TpSplit::kRows) {
    const int64_t rows = src.size(0) / tp;
    return src.slice0(rank * rows, (rank + 1) * rows).clone();
  }
  const int64_t R = src.size(0), C = src.size(1), c = C / tp;
  Tensor out = Tensor::empty({R, c}, src.dtype());
  for (int64_t i = 0; i < R; ++i)
    out.slice0(i, i + 1).copy_from(src.view({R * tp, c}).slice0(i * tp + rank, i * tp + rank + 1));
  return out;
}

Tensor tp_gather(const Tensor& local, TpSplit split, Communicator* tp) {
  const Tensor src = local.is_cpu() ? local : local.to(Device::kCPU);
  const int n = tp ? tp->size() : 1;
  if (split == TpSplit::kReplicated || n == 1) return src.clone();
  Tensor parts = Tensor::empty({n * src.numel()}, src.dtype());
  tp->all_gather(src.view({src.numel()}).clone(), parts);
  if (split == TpSplit::kRows) return parts.view(full_shape(src.shape(), split, n));
  // Columns: part k is [R, c]; the full row i is the concatenation of every part's row i.
  const int64_t R = src.size(0), c = src.size(1);
  Tensor out = Tensor::empty({R, c * n}, src.dtype());
  Tensor out_rows = out.view({R * n, c});
  for (int k = 0; k < n; ++k)
    for (int64_t i = 0; i < R; ++i)
      out_rows.slice0(i * n + k, i * n + k + 1)
          .copy_from(parts.view({n * R, c}).slice0(k * R + i, k * R + i + 1));
  return out;
}

// The vocab-parallel ops run where their tensors live (kernels/embedding.h,
// kernels/cross_entropy.h); only the loss and the count come back to the host.
void vocab_parallel_embedding_forward(const Tensor& tokens, const Tensor& table,
                                      int64_t vocab_begin, Tensor& out) {
  embedding_forward(tokens, table, vocab_begin, out);
}

void vocab_parallel_embedding_backward(const Tensor& dout, const Tensor& tokens,
                                       int64_t vocab_begin, Tensor& dtable) {
  embedding_backward(dout, tokens, vocab_begin, dtable);
}

VocabParallelCrossEntropy vocab_parallel_cross_entropy_forward(const Tensor& logits,
                                                               const Tensor& targets,
                                                               int64_t vocab_begin,
                                                               int ignore_index, Tensor& lse,
                                                               Communicator* tp) {
  MSA_CHECK(logits.ndim() == 2, "vocab_parallel_cross_entropy_forward: logits %s must be 2-D",
            logits.describe());
  const int64_t N = logits.size(0), S = tp ? tp->size() : 1;
  // Statistics in lse's dtype and place: f32 on the GPU (the exchange is 4 bytes per row and
  // rank), the logits' f32 / f64 on the CPU.
  Tensor all_lse = Tensor::empty({S, N}, lse.dtype(), lse.device());
  Tensor target_logit = Tensor::empty({N}, lse.dtype(), lse.device());
  if (tp == nullptr) {
    Tensor slice_lse = all_lse.view({N});
    cross_entropy_slice_forward(logits, targets, vocab_begin, slice_lse, target_logit);
  } else {
    Tensor slice_lse = Tensor::empty({N}, lse.dtype(), lse.device());
    cross_entropy_slice_forward(logits, targets, vocab_begin, slice_lse, target_logit);
    Tensor gathered = all_lse.view({S * N});
    tp->all_gather(slice_lse, gathered);
    tp->all_reduce_sum(target_logit);  // exact: one slice holds each target, the others add 0
  }
  // The vocabulary the targets index: tp slices of V/tp, or (tp = nullptr) up to this slice's end.
  const int64_t vocab = std::max(S * logits.size(1), vocab_begin + logits.size(1));
  const CrossEntropyResult ce =
      cross_entropy_combine(all_lse, target_logit, targets, vocab, ignore_index, lse);
  VocabParallelCrossEntropy r;
  r.loss = ce.loss;
  r.n_counted = ce.n_counted;
  return r;
}

void vocab_parallel_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                           const Tensor& lse, int64_t vocab_begin, int ignore_index,
                                           int64_t n_counted, double dloss, Tensor& dlogits) {
  cross_entropy_slice_backward(logits, targets, lse, vocab_begin, ignore_index, n_counted, dloss,
                               dlogits);
}

}  // namespace msa
