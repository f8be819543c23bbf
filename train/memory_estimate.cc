#include "train/memory_estimate.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"

namespace msa {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Activation bytes of one layer, by what holds them (model/attention_block.h, mlp_block.h).
struct LayerBytes {
  double residual = 0;       // one [N, D] residual-stream tensor
  double attention = 0;      // AttentionActivations without the MSA selection
  double mlp = 0;            // MlpActivations
  double msa_kept = 0;       // MSA: the selection and dW_IQ / dW_IK, kept through recomputation
  double msa_forward = 0;    // MSA: iq, ik and their gradients, alive inside the forward only
  double attention_bwd = 0;  // temporaries of attention_block_backward
  double mlp_bwd = 0;        // temporaries of mlp_block_backward
};

LayerBytes layer_bytes(const MemoryEstimateOptions& o, bool msa) {
  const ModelConfig& c = o.model;
  const int tp = std::max(1, o.tp);
  const double N = static_cast<double>(o.batch_size) * static_cast<double>(o.seq_len);
  const double D = static_cast<double>(c.d_model), d = c.head_dim;
  const double H = c.n_heads / tp, G = c.n_kv_heads / tp;
  const double F = static_cast<double>(c.ffn_dim / tp);
  const double dI = c.msa.index_dim;
  const double w = o.cuda ? 2 : 4;  // bf16 on CUDA, f32 on the CPU
  const double st = 4;              // norms' 1/rms and the log-sum-exp: f32
  const double g = 4;               // gradients: f32 on both

  LayerBytes b;
  b.residual = N * D * w;
  b.attention = N * (D * w + st)                             // xn, rstd
                + N * (H + 2 * G) * d * w                    // q, k, v
                + N * (H + G) * d * w                        // q_rope, k_rope
                + N * H * (d * w + st);                      // att, lse
  if (c.qk_norm) b.attention += N * (H + G) * (d * w + st);  // qn, kn, rstd_q, rstd_k
  b.mlp = N * (D * w + st) + 3 * N * F * w;                  // xn, rstd, gate, up, h
  if (msa) {
    b.msa_kept = N * G * (int64_t{c.msa.topk} + 1) * 4  // selection indices and counts (i32)
                 + (G + 1) * dI * D * g;                // dW_IQ, dW_IK
    b.msa_forward = N * (G + 1) * dI * (w + g);  // iq, ik, diq, dik
  }
  b.attention_bwd = N * (2 * H + 2 * G) * d * w           // datt, dq_rope, dk_rope, dv
                    + 3 * N * D * w;                      // dxn, dxn_part, dx
  if (c.qk_norm) b.attention_bwd += N * (H + G) * d * w;  // dq_pre, dk_pre
  // cuDNN's dense backward accumulates dQ in f32 (an allocator tensor during the call); MSA
  // layers run it too while the index warm-up attends densely (on by default).
  if (o.cuda) b.attention_bwd += N * H * d * 4;
  b.mlp_bwd = 3 * N * F * w + 3 * N * D * w;              // dh, dgate, dup, dxn, dxn_up, dx
  if (o.cp > 1) {
    // model/context_parallel.cc: k_ctx and v_ctx, the whole sequence's keys, are kept per layer
    // (the last contiguous shard and zig-zag's rank 0 attend to all of them; one-sequence
    // contiguous batches keep a view of the whole gathered buffer on every rank); the backward
    // sums their gradients at key length in f32 and reduce-scatters them through f32 send
    // buffers of the same size; MSA layers gather the index keys too.
    const double Nk = N * o.cp;
    b.attention += 2 * Nk * G * d * w;
    b.attention_bwd += 2 * 2 * Nk * G * d * 4;
    if (msa) b.msa_forward += Nk * dI * (w + g);
  }
  return b;
}

// Exactly the tensors the registry allocates on this rank (doubles: exact below 2^53); sets
// e.parameter_count.
double count_parameters(const ModelConfig& c, int tp, MemoryEstimate& e) {
  double count = 0;
  for (const ParamSpec& spec : local_param_specs(c, tp)) {
    double n = 1;
    for (int64_t dim : spec.shape) n *= static_cast<double>(dim);
    count += n;
  }
  e.parameter_count =
      count < 9e18 ? static_cast<int64_t>(count) : std::numeric_limits<int64_t>::max();
  return count;
}

}  // namespace

std::string memory_string(double bytes) {
  if (bytes < kGiB) return absl::StrFormat("%.1f MiB", bytes / (1024.0 * 1024.0));
  return absl::StrFormat("%.2f GiB", bytes / kGiB);
}

std::string MemoryEstimate::describe() const {
  return absl::StrFormat(
      "%s (parameters %s, gradients %s, optimizer %s, activations %s, workspace %s)",
      memory_string(total()), memory_string(parameters), memory_string(gradients),
      memory_string(optimizer), memory_string(activations), memory_string(workspace));
}

MemoryEstimate estimate_training_memory(const MemoryEstimateOptions& o) {
  const ModelConfig& c = o.model;
  const int tp = std::max(1, o.tp), dp = std::max(1, o.dp);
  MemoryEstimate e;

  const double P = count_parameters(c, tp, e);
  e.parameters = P * (o.cuda ? 2 : 4);
  e.gradients = P * 4;
  // Data parallelism without ZeRO-1 sums the gradients through all-reduce buckets that hold a
  // second f32 copy of them for the whole run (AdamW::init_buckets); ~4 GB at 1B parameters.
  if (!o.zero1 && dp > 1) e.gradients += P * 4;
  // ZeRO-1 flattens every gradient into one f32 buffer for the reduce-scatter, then all-gathers
  // the updated weights into another (bf16 on the GPU, f32 on the CPU): at each step, one after
  // the other, beside the full gradients (measured: ZeRO-1 ranks peaked 4 bytes a parameter above
  // the estimate without this).
  if (o.zero1) e.gradients += P * 4;
  if (o.zero1) {
    // Flat f32 shards of the masters, both moments and the reduce-scattered gradients.
    e.optimizer = 16 * P / dp;
  } else {
    // m and v; on CUDA also the f32 masters of the bf16 weights (on the CPU the weights are f32
    // and serve as their own masters).
    e.optimizer = 8 * P + (o.cuda ? 4 * P : 0);
  }

  const double N = static_cast<double>(o.batch_size) * static_cast<double>(o.seq_len);
  const double w = o.cuda ? 2 : 4;
  const double V = static_cast<double>(c.vocab_size / tp), D = static_cast<double>(c.d_model);
  double peak_layer_transient = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerBytes b = layer_bytes(o, c.layer_kind(l) == AttentionKind::kMsa);
    double kept = b.msa_kept, recomputed = 0;
    switch (o.recompute) {
      case Recompute::kNone:
        kept += 2 * b.residual + b.attention + b.mlp;
        break;
      case Recompute::kAttention:
        kept += 2 * b.residual + b.mlp;
        recomputed = b.attention;
        break;
      case Recompute::kFull:
        kept += b.residual;
        recomputed = b.residual + b.attention + b.mlp;
        break;
    }
    e.activations += kept;
    // The backward of one layer: what its recomputation refills, the larger block's
    // temporaries and the incoming and outgoing gradients of the residual stream.
    const double backward = recomputed + std::max(b.attention_bwd, b.mlp_bwd) + 2 * b.residual;
    // The forward of one MSA layer: its index branch's buffers beside the block's output.
    const double forward = b.msa_forward + b.residual;
    peak_layer_transient = std::max({peak_layer_transient, backward, forward});
  }
  // The head: the last residual, its normalization, the logits (their gradient reuses them),
  // the log-sum-exp, and the tokens and targets (i32).
  e.activations += 2 * N * D * w + N * V * w + 2 * N * 4 + 2 * N * 4;
  e.workspace = peak_layer_transient;
  return e;
}

MemoryEstimate estimate_inference_memory(const MemoryEstimateOptions& o) {
  const ModelConfig& c = o.model;
  const int tp = std::max(1, o.tp);
  MemoryEstimate e;
  e.parameters = count_parameters(c, tp, e) * (o.cuda ? 2 : 4);
  const double N = static_cast<double>(o.batch_size) * static_cast<double>(o.seq_len);
  const double w = o.cuda ? 2 : 4;
  const double V = static_cast<double>(c.vocab_size / tp), D = static_cast<double>(c.d_model);
  const double G = c.n_kv_heads / tp, dI = c.msa.index_dim;
  // A layer's buffers and the head's are never alive together (the forward drops each layer's
  // activations, the MSA selection included, before the next): the peak is the larger of one
  // layer and the head, not their sum (the sum was 1.6x the measured peak on an H100).
  double peak = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    const bool msa = c.layer_kind(l) == AttentionKind::kMsa;
    const LayerBytes b = layer_bytes(o, msa);
    // Attention: its input and output beside its activations, and for MSA the index query and
    // key heads, their gradients (f32: the index loss computes them with its value) and the
    // selection. MLP: the input, the attention's output and their sum.
    const double index =
        msa ? N * (G + 1) * dI * (w + 4) + N * G * (int64_t{c.msa.topk} + 1) * 4 : 0;
    peak = std::max({peak, 2 * b.residual + b.attention + index, 3 * b.residual + b.mlp});
  }
  // The head: the last residual, its normalization and 1/rms, the logits and their log-sum-exp.
  peak = std::max(peak, 2 * N * D * w + N * V * w + 2 * N * 4);
  e.workspace = peak;
  e.activations = 2 * N * 4;  // the tokens and targets (i32), alive throughout
  return e;
}

absl::Status check_memory_fits(const MemoryEstimate& e, const MemoryEstimateOptions& o,
                               double available_bytes, int ranks_sharing,
                               const std::string& where) {
  const int ranks = std::max(1, ranks_sharing);
  const double needed = e.total() * ranks;
  if (needed <= available_bytes) return absl::OkStatus();

  std::vector<std::string> tries;
  if (o.recompute != Recompute::kFull) {
    MemoryEstimateOptions full = o;
    full.recompute = Recompute::kFull;
    tries.push_back(absl::StrFormat("--recompute=full (~%s)",
                                    memory_string(estimate_training_memory(full).total())));
  }
  if (o.batch_size > 1) tries.push_back("a smaller --batch_size (with --grad_accum)");
  tries.push_back("a shorter --seq_len");
  tries.push_back("a larger --tp (more ranks share the weights)");
  if (o.dp > 1 && !o.zero1) tries.push_back("--zero1");
  return absl::ResourceExhaustedError(absl::StrFormat(
      "not enough memory: the run needs ~%s per rank%s on %s, %s free; try %s; or "
      "--skip_memory_check to start anyway (the estimate: %s)",
      memory_string(e.total()),
      ranks > 1 ? absl::StrFormat(" (x %d ranks sharing it: ~%s)", ranks, memory_string(needed))
                : "",
      where, memory_string(available_bytes), absl::StrJoin(tries, " / "), e.describe()));
}

}  // namespace msa
