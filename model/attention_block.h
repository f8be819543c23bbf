// The attention half of a decoder layer, dense GQA or MSA, forward and backward written out
// explicitly (llm.c style): RMSNorm -> q/k/v projections (+bias) -> q/k RMSNorm -> RoPE ->
// attention -> output projection. The residual add is the caller's.
//
// For an MSA layer (DESIGN.md section 4) the index branch runs on the *detached* normalized input:
// iq = xn W_IQ^T (one index query head per KV group), ik = xn W_IK^T (one index key head shared by
// the groups), the selection (max-pooled token scores, exp-free top-k), and the token-level index
// distillation loss with its gradients for iq, ik, all in the forward. No gradient from it
// reaches the backbone, and the LM loss reaches the index branch through no path (top-k is not
// differentiable).
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "core/tensor.h"
#include "kernels/msa.h"
#include "model/context_parallel.h"
#include "model/document_segments.h"
#include "model/model_config.h"
#include "model/normed_input.h"
#include "model/parameters.h"

namespace msa {

// How an MSA layer runs this step.
enum class MsaMode {
  kSparse,       // block-sparse attention over the selected blocks, KL over their tokens
  kDenseWarmup,  // index warm-up: dense attention (outputs identical to a dense layer), KL over
                 // every causal token (the dense-target loss)
};

// Everything the backward needs, named after what it holds. N = batch * T.
struct AttentionActivations {
  Tensor xn, rstd;                // normalized input [N, D], its 1/rms [N]
  Tensor q, k, v;                 // projections [N, H*d], [N, G*d], [N, G*d] (q, k before q/k norm)
  Tensor qn, kn, rstd_q, rstd_k;  // after q/k RMSNorm (qk_norm only), [N*H, d] / [N*G, d]
  Tensor q_rope, k_rope;          // [batch, T, H, d], [batch, T, G, d]
  // The keys and values attention reads, [batch, Tk, G, d]: k_rope and v themselves (Tk = T), or
  // with context parallelism every shard's up to the end of this rank's (Tk = (cp rank + 1) T).
  Tensor k_ctx, v_ctx;
  Tensor att, lse;                // attention output [batch, T, H, d], log-sum-exp [batch, H, T]
                                  // (packed documents: model/segmented_kernels.h's layout)
  // The documents of a packed batch (null: each row is one sequence), from the forward's options.
  std::shared_ptr<const DocumentSegments> documents;
  // MSA only (the index queries iq [batch, T, G, d_I] and shared keys ik [batch, T, d_I] live
  // only inside the forward).
  // The selection (sparse mode always; warm-up mode only when recall is measured).
  std::optional<BlockSelection> selection;
  bool sparse_attention = false;  // att came from the block-sparse kernel (else dense)
  // Gradients of the (unweighted) index loss w.r.t. W_IQ and W_IK, computed in the forward (the
  // branch is detached: its gradient is complete there). Small ((G + 1) d_I D), so they and the
  // selection outlive recomputation's dropped activations: the backward's recomputation runs
  // neither the indexer nor the index loss again.
  Tensor dwiq, dwik;
  double index_loss = 0;          // L_KL: mean KL(P || Q) over this rank's batch * T * G rows
  int64_t index_rows = 0;
  double index_recall = -1;          // < 0 when not computed (msa_index_recall)
  double block_recall = -1;          // < 0 when not computed (msa_block_recall)
  double index_recall_ceiling = -1;  // < 0 when not computed (msa_index_recall_ceiling)
  double max_pool_recall_ceiling = -1;  // < 0 when not computed (OracleRecall)
  double recall_rows = 0;               // the rows the four above average over (OracleRecall::rows)
  // The same three measured at AttentionBlockOptions::answer_positions only (< 0: not computed).
  double answer_index_recall = -1;
  double answer_block_recall = -1;
  double answer_index_recall_ceiling = -1;
  // With AttentionBlockOptions::answer_key_positions: the fraction of (answer, group) rows whose
  // selection holds the block of the answer's key position (< 0: not computed).
  double answer_key_selected = -1;
};

struct AttentionBlockOptions {
  MsaMode msa_mode = MsaMode::kSparse;
  bool compute_index_grads = true;
  // > 0: measure the index recall, the block recall and the index recall ceiling on one query per
  // window of this many (strided_recall_queries; the last two from one pass over the dense
  // attention).
  int64_t recall_query_stride = 0;
  // Non-empty: also measure the three at these queries only (e.g. a retrieval task's answer
  // positions, whose attention decides the answer), independently of the stride.
  std::vector<RecallQuery> answer_positions;
  // Optional, one per answer position: the position of what it needs (a retrieval task's fact);
  // measures msa_selected_key_fraction there.
  std::vector<int64_t> answer_key_positions;
  // Recomputation in the backward: `act` still holds this step's selection, index loss and
  // dwiq / dwik from the forward; keep them instead of running the indexer and the loss again.
  bool reuse_index = false;
  // Packed documents (msa-train --pack_documents): attention, RoPE positions, the MSA selection
  // and the index loss stay inside each document (model/segmented_kernels.h). Null: each row is
  // one sequence. Not combined with context parallelism (refused by msa-train).
  std::shared_ptr<const DocumentSegments> documents;
  // Context parallelism: x holds this rank's shard of every sequence (T tokens of cp.size * T);
  // the keys, values and index keys are gathered over cp (model/context_parallel.h).
  ContextParallel cp;
};

// x [N, D] (the residual stream). Writes the attention's contribution y [N, D] (before the
// residual add) and fills `act`. `normed`: x's RMSNorm under attn_norm, when the caller computed
// it (else the block does).
void attention_block_forward(const ModelConfig& config, int layer, ParameterSet& params,
                             const Tensor& x, int64_t batch, int64_t T,
                             const AttentionBlockOptions& options, AttentionActivations& act,
                             Tensor& y, const NormedInput* normed = nullptr);

// dy [N, D]: gradient w.r.t. y. Writes dx [N, D] (gradient w.r.t. x through this block only;
// the caller adds the residual path). Backbone parameter gradients accumulate when `backbone`;
// index-branch gradients (W_IQ, W_IK) accumulate index_weight * d(index loss) for MSA layers,
// from act.dwiq / act.dwik, which this consumes. dx is left undefined when !backbone. `cp`: the
// forward's options.cp (the key and value gradients are reduce-scattered over it). `skip_grad`,
// when defined, is added to dx in RMSNorm's backward pass (the residual path's gradient; one
// elementwise pass fewer than a separate add).
void attention_block_backward(const ModelConfig& config, int layer, ParameterSet& params,
                              const Tensor& x, const Tensor& dy, int64_t batch, int64_t T,
                              AttentionActivations& act, bool backbone, double index_weight,
                              Tensor& dx, const ContextParallel& cp = {},
                              const Tensor& skip_grad = Tensor());

}  // namespace msa
