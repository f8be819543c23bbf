#include "model/transformer.h"

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"

namespace msa {

Transformer::Transformer(const ModelConfig& config, DType dtype, Device device, TensorParallel tp,
                         ContextParallel cp)
    : config_(config), tp_(tp), cp_(cp), dtype_(dtype), device_(device) {
  MSA_CHECK(!tp_.enabled() || tp_.comm != nullptr, "tensor parallelism needs a communicator");
  MSA_CHECK(!cp_.enabled() || cp_.comm != nullptr, "context parallelism needs a communicator");
  block_config_ = local_block_config(config_, tp_.size);
  vocab_begin_ = tp_.rank * (config_.vocab_size / tp_.size);
  params_ = ParameterSet::allocate(local_param_specs(config_, tp_.size), dtype, device);
  for (int l = 0; l < config_.n_layers; ++l)
    if (config_.layer_kind(l) == AttentionKind::kMsa) ++n_msa_layers_;
  index_row_share_.assign(config_.n_layers, 1.0);
  layer_params_.resize(config_.n_layers);
  layer_replicated_.resize(config_.n_layers);
  layer_index_replicated_.resize(config_.n_layers);
  for (Parameter& p : params_.all()) {
    const std::string& name = p.spec.name;
    if (name == "embed.weight") {
      embed_params_.push_back(&p);  // tied or not, its last use is the first layer
    } else if (absl::StartsWith(name, "layers.")) {
      const int l = std::stoi(name.substr(7));
      layer_params_[l].push_back(&p);
      if (p.spec.tp_split == TpSplit::kReplicated) {
        layer_replicated_[l].push_back(&p);
        if (p.spec.index_branch) layer_index_replicated_[l].push_back(&p);
      }
    } else {
      head_params_.push_back(&p);  // final_norm, lm_head
    }
  }
}

absl::StatusOr<Recompute> parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "attention") return Recompute::kAttention;
  if (name == "full") return Recompute::kFull;
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --recompute: '%s' (use none, attention or full)", name));
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone:
      return "none";
    case Recompute::kAttention:
      return "attention";
    case Recompute::kFull:
      return "full";
  }
  return "?";
}

namespace {

// A layer's recall scalars (< 0: not measured), each a mean over the tp ranks' groups. The first
// kSampledRecalls are measured at the strided queries (recall_query_stride; also means over cp
// ranks' queries), the rest at the answer positions.
constexpr double AttentionActivations::*kRecalls[] = {
    &AttentionActivations::index_recall,
    &AttentionActivations::block_recall,
    &AttentionActivations::index_recall_ceiling,
    &AttentionActivations::max_pool_recall_ceiling,
    &AttentionActivations::answer_index_recall,
    &AttentionActivations::answer_block_recall,
    &AttentionActivations::answer_index_recall_ceiling,
    &AttentionActivations::answer_key_selected,
};
constexpr int kNumRecalls = sizeof(kRecalls) / sizeof(kRecalls[0]);
constexpr int kSampledRecalls = 4;
static_assert(kRecalls[kSampledRecalls - 1] == &AttentionActivations::max_pool_recall_ceiling,
              "the strided recalls come first in kRecalls");

void copy_recalls(const AttentionActivations& from, AttentionActivations& to) {
  for (auto field : kRecalls) to.*field = from.*field;
  to.recall_rows = from.recall_rows;
}

// Drops the tensors of a layer's attention activations, keeping its scalars (losses, recall) and,
// for a backward, what the index branch computed once per step: the selection (with the GPU's
// work lists derived from it) and the weight gradients.
void drop_tensors(AttentionActivations& act, bool keep_index_state = true) {
  AttentionActivations kept;
  if (keep_index_state) {
    kept.selection = std::move(act.selection);
    kept.documents = std::move(act.documents);
    kept.dwiq = std::move(act.dwiq);
    kept.dwik = std::move(act.dwik);
  }
  kept.index_loss = act.index_loss;
  kept.index_rows = act.index_rows;
  copy_recalls(act, kept);
  act = std::move(kept);
}

}  // namespace

void Transformer::recompute_layer(int l, bool with_mlp) {
  const int64_t N = batch_ * T_, D = config_.d_model;
  AttentionBlockOptions options = attn_options_;
  options.recall_query_stride = 0;  // measured in the forward already
  options.reuse_index = true;       // selection, index loss and its gradients: from the forward
  options.answer_positions.clear();
  options.answer_key_positions.clear();
  const AttentionActivations kept = attn_[l];
  Tensor y = Tensor::empty({N, D}, dtype_, device_);
  attention_block_forward(block_config_, l, params_, residual_in_[l], batch_, T_, options, attn_[l],
                          y);
  copy_recalls(kept, attn_[l]);
  if (!with_mlp) return;
  tp_all_reduce(y);
  Tensor mid = Tensor::empty({N, D}, dtype_, device_);
  const NormedInput mlp_in = add_and_normalize(
      residual_in_[l], y, params_.at(layer_param_name(l, "mlp_norm.weight")).value,
      config_.norm_eps, mid);
  residual_mid_[l] = mid;
  mlp_block_forward(block_config_, l, params_, mid, mlp_[l], y, &mlp_in);
}

void Transformer::tp_all_reduce(Tensor& t) {
  if (tp_.enabled()) tp_.comm->all_reduce_sum(t);
}

std::vector<Tensor> Transformer::snapshot_grads(const std::vector<Parameter*>& params) const {
  std::vector<Tensor> out;
  if (!tp_.enabled()) return out;
  for (const Parameter* p : params) out.push_back(p->grad.clone());
  return out;
}

void Transformer::tp_reduce_replicated_grads(const std::vector<Parameter*>& params,
                                             const std::vector<Tensor>& before) {
  if (!tp_.enabled() || params.empty()) return;
  // Only this backward's contribution is partial (what the grads held before is already whole,
  // e.g. from earlier micro-batches): sum the differences, in one all-reduce for the layer's few
  // small vectors.
  int64_t n = 0;
  for (const Parameter* p : params) n += p->grad.numel();
  Tensor flat = Tensor::empty({n}, params[0]->grad.dtype(), params[0]->grad.device());
  int64_t off = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& g = params[i]->grad;
    Tensor part = flat.slice0(off, off + g.numel());
    part.copy_from(g.view({g.numel()}));
    Tensor negated = before[i].clone();
    scale_inplace(negated, -1.0);
    add_inplace(part, negated.view({g.numel()}));
    off += g.numel();
  }
  tp_.comm->all_reduce_sum(flat);
  off = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    Parameter* p = params[i];
    p->grad.copy_from(before[i]);
    add_inplace(p->grad, flat.slice0(off, off + p->grad.numel()).view(p->grad.shape()));
    off += p->grad.numel();
  }
}

ForwardResult Transformer::forward(const Tensor& tokens, const Tensor& targets,
                                   const ForwardOptions& options) {
  MSA_CHECK(tokens.ndim() == 2 && tokens.dtype() == DType::kI32,
            "tokens must be i32 [batch, T], got %s", tokens.describe());
  check_shape(targets, tokens.shape(), "targets");
  batch_ = tokens.size(0);
  T_ = tokens.size(1);
  const int64_t N = batch_ * T_, D = config_.d_model, V = config_.vocab_size;
  const int L = config_.n_layers;
  tokens_ = tokens.view({N});
  targets_ = targets.view({N});
  const DType st = device_ == Device::kCUDA ? DType::kF32 : dtype_;

  residual_in_.assign(L, Tensor());
  residual_mid_.assign(L, Tensor());
  attn_.assign(L, AttentionActivations());
  mlp_.assign(L, MlpActivations());

  Tensor x = Tensor::empty({N, D}, dtype_, device_);
  if (tp_.enabled()) {
    vocab_parallel_embedding_forward(tokens_, params_.at("embed.weight").value, vocab_begin_, x);
    tp_all_reduce(x);
  } else {
    embedding_forward(tokens_, params_.at("embed.weight").value, x);
  }

  AttentionBlockOptions attn_options;
  attn_options.msa_mode = options.msa_mode;
  attn_options.compute_index_grads = options.for_backward;
  attn_options.recall_query_stride = options.recall_query_stride;
  MSA_CHECK(!options.documents ||
                (options.documents->batch() == batch_ && options.documents->seq_len() == T_),
            "document segments for [%d, %d] given with tokens %s", options.documents->batch(),
            options.documents->seq_len(), tokens.describe());
  attn_options.documents = options.documents;
  if (!attn_options.documents && cp_.enabled() && cp_.zigzag) {
    // Zig-zag cp: a rank's two chunks run as two segments of one document per row.
    attn_options.documents = std::make_shared<const DocumentSegments>(DocumentSegments::from_starts(
        batch_, T_, std::vector<std::vector<int64_t>>(batch_, {0}), cp_.chunks(T_)));
  }
  attn_options.cp = cp_;
  attn_options.answer_positions = options.answer_positions;
  attn_options.answer_key_positions = options.answer_key_positions;
  attn_options_ = attn_options;
  // A forward without a backward keeps no layer's activations past the layer (evaluation held
  // every layer's whatever --recompute said: a run that fits only with --recompute=full reached
  // no-recompute memory at its first evaluation). With a backward, --recompute decides.
  const bool inference = !options.for_backward;
  const bool drop = inference || recompute_ != Recompute::kNone;
  const bool drop_mlp = inference || (drop && recompute_ == Recompute::kFull);

  ForwardResult result;
  // Each residual add is fused with the norm that reads its result next (one pass over the
  // residual stream instead of two): layer l's attention norm comes from layer l - 1's last add,
  // the final norm from the last layer's.
  NormedInput attn_in;
  for (int l = 0; l < L; ++l) {
    residual_in_[l] = x;
    Tensor y = Tensor::empty({N, D}, dtype_, device_);
    attention_block_forward(block_config_, l, params_, x, batch_, T_, attn_options, attn_[l], y,
                            l > 0 ? &attn_in : nullptr);
    attn_in = NormedInput();
    tp_all_reduce(y);  // g: the heads' partial outputs
    // Inference drops the selection too: eight MSA layers' selections and work lists stayed
    // beside the logits (the peak of msa-eval's forward).
    if (drop) drop_tensors(attn_[l], /*keep_index_state=*/!inference);
    Tensor mid = Tensor::empty({N, D}, dtype_, device_);
    const NormedInput mlp_in = add_and_normalize(
        x, y, params_.at(layer_param_name(l, "mlp_norm.weight")).value, config_.norm_eps, mid);
    residual_mid_[l] = mid;
    mlp_block_forward(block_config_, l, params_, mid, mlp_[l], y, &mlp_in);
    tp_all_reduce(y);  // g: the FFN columns' partial outputs
    if (drop_mlp) {
      mlp_[l] = MlpActivations();
      residual_mid_[l] = Tensor();
    }
    if (inference) residual_in_[l] = Tensor();
    x = Tensor::empty({N, D}, dtype_, device_);
    const Tensor& next_norm = l + 1 < L
                                  ? params_.at(layer_param_name(l + 1, "attn_norm.weight")).value
                                  : params_.at("final_norm.weight").value;
    attn_in = add_and_normalize(mid, y, next_norm, config_.norm_eps, x);
  }
  if (tp_.enabled() && n_msa_layers_ > 0) {
    // Each rank's index loss is the mean over its KV groups' rows: the layer's loss is the
    // row-weighted mean over ranks, and its gradient on this rank scales by its share of rows.
    // Recalls are means over ranks (each measures its groups; every rank has as many).
    // Slots per layer: the loss times its rows, the rows, then kRecalls in order.
    constexpr int kSlots = 2 + kNumRecalls;
    Tensor sums = Tensor::zeros({kSlots * L}, DType::kF64);
    double* v = sums.data<double>();
    for (int l = 0; l < L; ++l) {
      if (config_.layer_kind(l) != AttentionKind::kMsa) continue;
      v[kSlots * l] = attn_[l].index_loss * attn_[l].index_rows;
      v[kSlots * l + 1] = static_cast<double>(attn_[l].index_rows);
      for (int i = 0; i < kNumRecalls; ++i) v[kSlots * l + 2 + i] = attn_[l].*kRecalls[i];
    }
    tp_.comm->all_reduce_sum(sums);
    for (int l = 0; l < L; ++l) {
      if (config_.layer_kind(l) != AttentionKind::kMsa) continue;
      const double rows = v[kSlots * l + 1];
      index_row_share_[l] = rows > 0 ? attn_[l].index_rows / rows : 0.0;
      attn_[l].index_loss = rows > 0 ? v[kSlots * l] / rows : 0.0;
      for (int i = 0; i < kNumRecalls; ++i)
        if (attn_[l].*kRecalls[i] >= 0) attn_[l].*kRecalls[i] = v[kSlots * l + 2 + i] / tp_.size;
    }
  }
  if (cp_.enabled() && options.recall_query_stride > 0 && n_msa_layers_ > 0) {
    // Each cp rank measured the recalls of its own queries, the whole sequence's sample among
    // them: the sequence's are the means over all of them, each rank weighed by its sampled rows
    // (a plain mean over ranks counted a rank that sampled nothing as recall 1.0, and ranks with
    // more of the sample as much as those with less). (The index losses are combined by the
    // caller, which weighs every rank's rows.) Slots per layer: the rows, then the recalls x rows.
    constexpr int kSlots = 1 + kSampledRecalls;
    Tensor sums = Tensor::zeros({kSlots * L}, DType::kF64);
    double* v = sums.data<double>();
    for (int l = 0; l < L; ++l) {
      v[kSlots * l] = attn_[l].recall_rows;
      for (int i = 0; i < kSampledRecalls; ++i)
        v[kSlots * l + 1 + i] = attn_[l].recall_rows * attn_[l].*kRecalls[i];
    }
    cp_.comm->all_reduce_sum(sums);
    for (int l = 0; l < L; ++l) {
      const double rows = v[kSlots * l];
      for (int i = 0; i < kSampledRecalls; ++i)
        if (attn_[l].*kRecalls[i] >= 0)
          attn_[l].*kRecalls[i] = rows > 0 ? v[kSlots * l + 1 + i] / rows : 1.0;
      attn_[l].recall_rows = rows;
    }
  }
  for (int l = 0; l < L; ++l) {
    if (config_.layer_kind(l) != AttentionKind::kMsa) continue;
    // The spec's sum over MSA layers (not a mean): lambda weighs every layer's KL fully.
    result.index_loss += attn_[l].index_loss;
    result.layer_index_loss.push_back(attn_[l].index_loss);
    if (attn_[l].index_recall >= 0) result.index_recall.push_back(attn_[l].index_recall);
    if (attn_[l].block_recall >= 0) result.block_recall.push_back(attn_[l].block_recall);
    if (attn_[l].index_recall_ceiling >= 0)
      result.index_recall_ceiling.push_back(attn_[l].index_recall_ceiling);
    if (attn_[l].max_pool_recall_ceiling >= 0)
      result.max_pool_recall_ceiling.push_back(attn_[l].max_pool_recall_ceiling);
    if (attn_[l].index_recall >= 0) result.recall_rows = attn_[l].recall_rows;
    if (attn_[l].answer_index_recall >= 0)
      result.answer_index_recall.push_back(attn_[l].answer_index_recall);
    if (attn_[l].answer_block_recall >= 0)
      result.answer_block_recall.push_back(attn_[l].answer_block_recall);
    if (attn_[l].answer_index_recall_ceiling >= 0)
      result.answer_index_recall_ceiling.push_back(attn_[l].answer_index_recall_ceiling);
    if (attn_[l].answer_key_selected >= 0)
      result.answer_key_selected.push_back(attn_[l].answer_key_selected);
  }
  x_final_ = x;
  if (L > 0) {  // the last layer's residual add computed it
    xn_final_ = attn_in.xn;
    rstd_final_ = attn_in.rstd;
  } else {
    xn_final_ = Tensor::empty({N, D}, dtype_, device_);
    rstd_final_ = Tensor::empty({N}, st, device_);
    rmsnorm_forward(x, params_.at("final_norm.weight").value, config_.norm_eps, xn_final_,
                    rstd_final_);
  }
  logits_ = Tensor::empty({N, V / tp_.size}, dtype_, device_);
  const Parameter& head =
      config_.tied_embeddings ? params_.at("embed.weight") : params_.at("lm_head.weight");
  linear_forward(xn_final_, head.value, Tensor(), logits_);
  lse_ = Tensor::empty({N}, st, device_);
  CrossEntropyResult ce;
  if (tp_.enabled()) {
    const VocabParallelCrossEntropy vp = vocab_parallel_cross_entropy_forward(
        logits_, targets_, vocab_begin_, kIgnoreIndex, lse_, tp_.comm);
    ce.loss = vp.loss;
    ce.n_counted = vp.n_counted;
  } else {
    ce = cross_entropy_forward(logits_, targets_, kIgnoreIndex, lse_);
  }
  n_targets_ = ce.n_counted;
  result.lm_loss = ce.loss;
  result.n_targets = ce.n_counted;
  result.total_loss = ce.loss + config_.msa.index_loss_weight * result.index_loss;
  if (!options.for_backward) {
    residual_in_.clear();
    residual_mid_.clear();
    attn_.clear();
    mlp_.clear();
  }
  return result;
}

void Transformer::backward(double loss_scale, bool backbone) {
  backward(loss_scale, loss_scale, backbone);
}

void Transformer::backward(double loss_scale, double index_scale, bool backbone,
                           const GradsReadyFn& grads_ready) {
  MSA_CHECK(!attn_.empty(), "backward() without a forward(for_backward = true)");
  const int64_t N = batch_ * T_, D = config_.d_model;
  const int L = config_.n_layers;
  // d L / d L_KL(layer) = lambda for every MSA layer (L sums the layers' losses).
  const double index_weight = index_scale * config_.msa.index_loss_weight;
  auto ready = [&](const std::vector<Parameter*>& ps) {
    if (grads_ready && !ps.empty()) grads_ready(ps);
  };

  if (!backbone) {
    // Index warm-up with a frozen backbone: only the index branches learn; nothing flows
    // through the backbone. The shared index key W_IK still needs its sum over tp.
    ready(head_params_);
    for (int l = L - 1; l >= 0; --l) {
      Tensor none;
      const std::vector<Tensor> before = snapshot_grads(layer_index_replicated_[l]);
      // No recomputation: the index branch's gradients came out of the forward.
      attention_block_backward(block_config_, l, params_, residual_in_[l], Tensor(), batch_, T_,
                               attn_[l], /*backbone=*/false, index_weight * index_row_share_[l],
                               none, cp_);
      if (recompute_ != Recompute::kNone) drop_tensors(attn_[l]);
      attn_[l].selection.reset();  // this step's selection is used up
      tp_reduce_replicated_grads(layer_index_replicated_[l], before);
      ready(layer_params_[l]);
    }
    ready(embed_params_);
    return;
  }

  Tensor none;
  Tensor& dlogits = logits_;  // in place: the [N, V] buffer is the largest activation
  if (tp_.enabled())
    vocab_parallel_cross_entropy_backward(logits_, targets_, lse_, vocab_begin_, kIgnoreIndex,
                                          n_targets_, loss_scale, dlogits);
  else
    cross_entropy_backward(logits_, targets_, lse_, kIgnoreIndex, n_targets_, loss_scale, dlogits);
  Parameter& head =
      config_.tied_embeddings ? params_.at("embed.weight") : params_.at("lm_head.weight");
  Tensor dxn = Tensor::empty({N, D}, dtype_, device_);
  linear_backward(dlogits, xn_final_, head.value, dxn, head.grad, none);
  tp_all_reduce(dxn);  // f: each rank's vocabulary columns contribute part of dxn
  Tensor dx = Tensor::empty({N, D}, dtype_, device_);
  Parameter& final_norm = params_.at("final_norm.weight");
  rmsnorm_backward(dxn, x_final_, final_norm.value, rstd_final_, dx, final_norm.grad);
  ready(head_params_);

  for (int l = L - 1; l >= 0; --l) {
    // x_out = mid + mlp(mid): d mid = dx + mlp'(dx).
    const std::vector<Tensor> before = snapshot_grads(layer_replicated_[l]);
    if (recompute_ != Recompute::kNone) recompute_layer(l, recompute_ == Recompute::kFull);
    // Without tp the residual path's gradient is added inside RMSNorm's backward; with tp the
    // blocks' partial input gradients are all-reduced first, then it is added.
    const bool fuse_skip = !tp_.enabled();
    Tensor dmid;
    mlp_block_backward(block_config_, l, params_, residual_mid_[l], dx, mlp_[l], dmid,
                       fuse_skip ? dx : none);
    if (!fuse_skip) {
      tp_all_reduce(dmid);  // f: the FFN columns' partial input gradients
      add_inplace(dmid, dx);
    }
    // mid = x_in + attn(x_in).
    Tensor dx_in;
    attention_block_backward(block_config_, l, params_, residual_in_[l], dmid, batch_, T_, attn_[l],
                             /*backbone=*/true, index_weight * index_row_share_[l], dx_in, cp_,
                             fuse_skip ? dmid : none);
    if (!fuse_skip) {
      tp_all_reduce(dx_in);  // f: the heads' partial input gradients
      add_inplace(dx_in, dmid);
    }
    dx = dx_in;
    if (recompute_ != Recompute::kNone) {  // free this layer's recomputed activations now
      drop_tensors(attn_[l]);
      attn_[l].selection.reset();  // this step's selection is used up
      if (recompute_ == Recompute::kFull) {
        mlp_[l] = MlpActivations();
        residual_mid_[l] = Tensor();
      }
    }
    tp_reduce_replicated_grads(layer_replicated_[l], before);
    ready(layer_params_[l]);
  }
  if (tp_.enabled())
    vocab_parallel_embedding_backward(dx, tokens_, vocab_begin_, params_.at("embed.weight").grad);
  else
    embedding_backward(dx, tokens_, params_.at("embed.weight").grad);
  ready(embed_params_);
}

}  // namespace msa
