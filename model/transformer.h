// The Llama-style decoder: embedding -> L x [attention block + residual, MLP block + residual]
// -> final RMSNorm -> LM head (tied or not) -> cross entropy. Forward and backward are written out
// in the order they run; activations are kept between them.
//
// Loss (DESIGN.md section 4): L = L_LM + lambda * sum over MSA layers of L_KL, where each layer's
// L_KL is its index distillation loss, the mean KL over the batch * T * G (query, group) rows.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/attention_block.h"
#include "model/context_parallel.h"
#include "model/mlp_block.h"
#include "model/model_config.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"

namespace msa {

struct ForwardOptions {
  MsaMode msa_mode = MsaMode::kSparse;
  bool for_backward = true;         // keep what backward needs (index gradients included)
  int64_t recall_query_stride = 0;  // > 0: measure each MSA layer's recalls and recall ceiling
  // Packed documents (model/document_segments.h) for this batch: each document attends, ranks
  // blocks and counts RoPE positions on its own. Null: each row is one sequence.
  std::shared_ptr<const DocumentSegments> documents;
  // Non-empty: also measure both at these (batch row, t) queries only, e.g. the answer positions
  // of a retrieval task (kernels/msa.h, RecallQuery).
  std::vector<RecallQuery> answer_positions;
  // Optional, one per answer position: what it needs (e.g. the fact's position); measures the
  // fraction of answer rows whose selection holds that position's block.
  std::vector<int64_t> answer_key_positions;
};

struct ForwardResult {
  double lm_loss = 0;                    // mean cross entropy over counted targets
  int64_t n_targets = 0;                 // targets != ignore_index
  double index_loss = 0;                 // sum over MSA layers of L_KL (0 without MSA layers)
  double total_loss = 0;                 // lm_loss + lambda * index_loss
  std::vector<double> layer_index_loss;  // L_KL per MSA layer, in layer order
  std::vector<double> index_recall;      // per MSA layer, when measured: attention mass kept
  std::vector<double> block_recall;      // per MSA layer, when measured: the paper's block recall
  std::vector<double> index_recall_ceiling;  // per MSA layer, when measured: the oracle's mass
  std::vector<double> max_pool_recall_ceiling;  // per MSA layer, when measured (OracleRecall)
  double recall_rows = 0;  // the rows the four strided recalls average over (all cp ranks')
  std::vector<double> answer_index_recall;   // per MSA layer, at ForwardOptions::answer_positions
  std::vector<double> answer_block_recall;   // per MSA layer, at the same queries
  std::vector<double> answer_index_recall_ceiling;  // per MSA layer, at the same queries
  std::vector<double> answer_key_selected;          // per MSA layer, with answer_key_positions
};

inline constexpr int kIgnoreIndex = -100;

// Activation recomputation (what the forward drops and the backward computes again, layer by
// layer, so long sequences fit):
//   kNone       keep every activation;
//   kAttention  keep each layer's input and MLP activations, recompute the attention block
//               (its projections, q/k norm, RoPE, attention output and MSA index branch);
//   kFull       keep only each layer's input, recompute the whole layer.
// Results are identical to kNone: every kernel is deterministic for the same inputs.
enum class Recompute { kNone, kAttention, kFull };
absl::StatusOr<Recompute> parse_recompute(const std::string& name);
const char* recompute_name(Recompute r);

// Called during backward with parameters whose gradients are final for this backward: every
// parameter exactly once, in backward order (head and final norm, layers L-1..0, embedding), so
// data parallelism can start reducing them while the backward goes on.
using GradsReadyFn = std::function<void(const std::vector<Parameter*>&)>;

class Transformer {
 public:
  // dtype: f32 or f64 on the CPU (f64 for gradient checks), bf16 on CUDA. With tensor
  // parallelism (tp.size > 1) this rank holds its part of every split parameter (same names,
  // local shapes; see model/tensor_parallel.h) and forward/backward are collective over tp.
  // With context parallelism (cp.size > 1; CPU only) forward takes this rank's shard of every
  // sequence and forward/backward are collective over cp (model/context_parallel.h); the
  // parameters are whole on every cp rank and their gradients are this shard's part (the caller
  // sums them over dp x cp).
  Transformer(const ModelConfig& config, DType dtype, Device device, TensorParallel tp = {},
              ContextParallel cp = {});

  const ModelConfig& config() const { return config_; }
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const TensorParallel& tensor_parallel() const { return tp_; }
  const ContextParallel& context_parallel() const { return cp_; }
  void set_recompute(Recompute r) { recompute_ = r; }
  Recompute recompute() const { return recompute_; }

  // tokens, targets: i32 [batch, T] on the model's device (targets may hold kIgnoreIndex); with
  // context parallelism this rank's shard, positions [cp.rank T, (cp.rank + 1) T).
  ForwardResult forward(const Tensor& tokens, const Tensor& targets, const ForwardOptions& options);

  // Accumulates loss_scale * dL/dparam into the parameters' grads for the last forward (which
  // must have had for_backward). backbone = false (index warm-up) computes only the index
  // branch's gradients. The logits buffer is reused for its gradient.
  void backward(double loss_scale, bool backbone = true);
  // As above with separate scales for the LM loss and the index loss (data parallelism weights
  // the LM loss by target tokens and the index loss by sequences).
  void backward(double lm_scale, double index_scale, bool backbone,
                const GradsReadyFn& grads_ready = nullptr);

  // The last forward's logits [batch * T, V] (with tensor parallelism this rank's vocabulary
  // columns [batch * T, V / tp]); valid until backward().
  const Tensor& logits() const { return logits_; }

 private:
  // Tensor parallelism: the all-reduces of the residual stream (Megatron's f and g operators).
  void tp_all_reduce(Tensor& t);
  // Recomputation: runs layer l's attention block forward again from residual_in_[l] (and, with
  // with_mlp, the residual add and the MLP block) to refill the activations the forward dropped.
  void recompute_layer(int l, bool with_mlp);
  // Sums over tp what this backward added to the gradients of replicated parameters that this
  // rank's blocks only partly computed (`before`: their gradients before it, snapshot_grads).
  std::vector<Tensor> snapshot_grads(const std::vector<Parameter*>& params) const;
  void tp_reduce_replicated_grads(const std::vector<Parameter*>& params,
                                  const std::vector<Tensor>& before);

  ModelConfig config_;
  ModelConfig block_config_;  // what one rank's blocks compute (heads, kv heads, ffn / tp)
  TensorParallel tp_;
  ContextParallel cp_;
  int64_t vocab_begin_ = 0;  // first vocabulary row this rank holds
  // Parameters in the order backward finishes them (see GradsReadyFn), and per layer the
  // replicated ones whose gradients the tp ranks each compute in part.
  std::vector<Parameter*> head_params_, embed_params_;
  // layer_index_replicated_: the replicated ones of the index branch (W_IK), the only ones an
  // index-only (backbone = false) backward touches.
  std::vector<std::vector<Parameter*>> layer_params_, layer_replicated_, layer_index_replicated_;
  std::vector<double> index_row_share_;  // per layer: this rank's share of the index-loss rows
  DType dtype_;
  Device device_;
  ParameterSet params_;

  // Activations of the last forward.
  int64_t batch_ = 0, T_ = 0;
  Tensor tokens_, targets_;
  std::vector<Tensor> residual_in_;   // x entering layer l [N, D]
  std::vector<Tensor> residual_mid_;  // x after layer l's attention residual add
  std::vector<AttentionActivations> attn_;
  std::vector<MlpActivations> mlp_;
  Tensor x_final_, xn_final_, rstd_final_, logits_, lse_;
  int64_t n_targets_ = 0;
  int n_msa_layers_ = 0;
  Recompute recompute_ = Recompute::kNone;
  AttentionBlockOptions attn_options_;  // of the last forward (recomputation repeats them)
};

}  // namespace msa
