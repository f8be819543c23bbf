#include "model/tensor_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"

namespace msa {
namespace {

int split_dim(TpSplit split) { return split == TpSplit::kCols ? 1 : 0; }

// The vocab-parallel ops are row loops over small data next to the [N, V/tp] logits; they run on
// the host. CUDA tensors are staged through host memory (correct, not fast: a CUDA kernel can
// replace the staging without changing the contract).
Tensor host_compute_copy(const Tensor& t) {
  Tensor h = t.is_cpu() ? t : t.to(Device::kCPU);
  return h.dtype() == DType::kBF16 ? h.to(DType::kF32) : h;
}
void write_back(Tensor& dst, const Tensor& host) {
  if (dst.raw_data() == host.raw_data()) return;
  dst.copy_from(host.to(dst.dtype()).to(dst.device()));
}

template <class T>
void embedding_fwd(const int32_t* tok, const Tensor& table, int64_t v0, Tensor& out) {
  const int64_t N = out.size(0), D = out.size(1), Vl = table.size(0);
  const T* w = table.data<T>();
  T* y = out.data<T>();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t row = static_cast<int64_t>(tok[i]) - v0;
    if (row >= 0 && row < Vl)
      std::copy(w + row * D, w + (row + 1) * D, y + i * D);
    else
      std::fill(y + i * D, y + (i + 1) * D, T(0));
  }
}

template <class T>
void embedding_bwd(const Tensor& dout, const int32_t* tok, int64_t v0, Tensor& dtable) {
  const int64_t N = dout.size(0), D = dout.size(1), Vl = dtable.size(0);
  const T* dy = dout.data<T>();
  T* dw = dtable.data<T>();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t row = static_cast<int64_t>(tok[i]) - v0;
    if (row < 0 || row >= Vl) continue;
    for (int64_t j = 0; j < D; ++j) dw[row * D + j] += dy[i * D + j];
  }
}

template <class T>
VocabParallelCrossEntropy ce_fwd(const Tensor& logits, const int32_t* tgt, int64_t v0,
                                 int ignore_index, Tensor& lse, Communicator* tp) {
  const int64_t N = logits.size(0), Vl = logits.size(1);
  const T* x = logits.data<T>();
  // This rank's log-sum-exp and target logit of every row (f64 for the exchange).
  Tensor local_lse = Tensor::empty({N}, DType::kF64);
  Tensor target_logit = Tensor::zeros({N}, DType::kF64);
  double* ll = local_lse.data<double>();
  double* tl = target_logit.data<double>();
  for (int64_t i = 0; i < N; ++i) {
    const T* row = x + i * Vl;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < Vl; ++j) m = std::max(m, static_cast<double>(row[j]));
    double s = 0;
    for (int64_t j = 0; j < Vl; ++j) s += std::exp(static_cast<double>(row[j]) - m);
    ll[i] = m + std::log(s);
    const int64_t col = static_cast<int64_t>(tgt[i]) - v0;
    if (tgt[i] != ignore_index && col >= 0 && col < Vl) tl[i] = row[col];
  }
  const int n = tp ? tp->size() : 1;
  Tensor all_lse = Tensor::empty({n * N}, DType::kF64);
  if (tp)
    tp->all_gather(local_lse, all_lse);
  else
    all_lse.copy_from(local_lse);
  if (tp) tp->all_reduce_sum(target_logit);
  const double* al = all_lse.data<double>();
  T* out = lse.data<T>();
  VocabParallelCrossEntropy r;
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) {
    double m = -std::numeric_limits<double>::infinity();
    for (int k = 0; k < n; ++k) m = std::max(m, al[k * N + i]);
    double s = 0;
    for (int k = 0; k < n; ++k) s += std::exp(al[k * N + i] - m);
    const double g = m + std::log(s);
    out[i] = static_cast<T>(g);
    if (tgt[i] == ignore_index) continue;
    sum += g - tl[i];
    ++r.n_counted;
  }
  r.loss = r.n_counted > 0 ? sum / r.n_counted : 0.0;
  return r;
}

template <class T>
void ce_bwd(const Tensor& logits, const int32_t* tgt, const Tensor& lse, int64_t v0,
            int ignore_index, int64_t n_counted, double dloss, Tensor& dlogits) {
  const int64_t N = logits.size(0), Vl = logits.size(1);
  const T* x = logits.data<T>();
  const T* l = lse.data<T>();
  T* dx = dlogits.data<T>();
  const double scale = n_counted > 0 ? dloss / n_counted : 0.0;
  for (int64_t i = 0; i < N; ++i) {
    if (tgt[i] == ignore_index) {
      std::fill(dx + i * Vl, dx + (i + 1) * Vl, T(0));
      continue;
    }
    const int64_t col = static_cast<int64_t>(tgt[i]) - v0;
    const double g = l[i];
    for (int64_t j = 0; j < Vl; ++j) {
      const double p = std::exp(static_cast<double>(x[i * Vl + j]) - g);
      dx[i * Vl + j] = static_cast<T>(scale * (p - (j == col ? 1.0 : 0.0)));
    }
  }
}

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

void vocab_parallel_embedding_forward(const Tensor& tokens, const Tensor& table,
                                      int64_t vocab_begin, Tensor& out) {
  const Tensor tok = tokens.to(Device::kCPU);
  const Tensor w = host_compute_copy(table);
  Tensor y = out.is_cpu() && out.dtype() == w.dtype() ? out : Tensor::empty(out.shape(), w.dtype());
  if (w.dtype() == DType::kF64)
    embedding_fwd<double>(tok.data<int32_t>(), w, vocab_begin, y);
  else
    embedding_fwd<float>(tok.data<int32_t>(), w, vocab_begin, y);
  write_back(out, y);
}

void vocab_parallel_embedding_backward(const Tensor& dout, const Tensor& tokens,
                                       int64_t vocab_begin, Tensor& dtable) {
  const Tensor tok = tokens.to(Device::kCPU);
  const Tensor dy = host_compute_copy(dout);
  Tensor dw = dtable.is_cpu() && dtable.dtype() == dy.dtype() ? dtable : host_compute_copy(dtable);
  if (dy.dtype() == DType::kF64)
    embedding_bwd<double>(dy, tok.data<int32_t>(), vocab_begin, dw);
  else
    embedding_bwd<float>(dy, tok.data<int32_t>(), vocab_begin, dw);
  write_back(dtable, dw);
}

VocabParallelCrossEntropy vocab_parallel_cross_entropy_forward(const Tensor& logits,
                                                               const Tensor& targets,
                                                               int64_t vocab_begin,
                                                               int ignore_index, Tensor& lse,
                                                               Communicator* tp) {
  const Tensor tgt = targets.to(Device::kCPU);
  const Tensor x = host_compute_copy(logits);
  Tensor l = lse.is_cpu() && lse.dtype() == x.dtype() ? lse : Tensor::empty(lse.shape(), x.dtype());
  VocabParallelCrossEntropy r =
      x.dtype() == DType::kF64
          ? ce_fwd<double>(x, tgt.data<int32_t>(), vocab_begin, ignore_index, l, tp)
          : ce_fwd<float>(x, tgt.data<int32_t>(), vocab_begin, ignore_index, l, tp);
  write_back(lse, l);
  return r;
}

void vocab_parallel_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                           const Tensor& lse, int64_t vocab_begin, int ignore_index,
                                           int64_t n_counted, double dloss, Tensor& dlogits) {
  const Tensor tgt = targets.to(Device::kCPU);
  const Tensor x = host_compute_copy(logits);
  const Tensor l = host_compute_copy(lse);
  const bool in_place = dlogits.is_cpu() && dlogits.dtype() == x.dtype();
  Tensor dx = in_place ? dlogits : Tensor::empty(x.shape(), x.dtype());
  if (x.dtype() == DType::kF64)
    ce_bwd<double>(x, tgt.data<int32_t>(), l, vocab_begin, ignore_index, n_counted, dloss, dx);
  else
    ce_bwd<float>(x, tgt.data<int32_t>(), l, vocab_begin, ignore_index, n_counted, dloss, dx);
  write_back(dlogits, dx);
}

}  // namespace msa
