#include "model/transformer.h"

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"

namespace msa {

Transformer::Transformer(const ModelConfig& config, DType dtype, Device device)
    : config_(config), dtype_(dtype), device_(device) {
  params_ = ParameterSet::allocate(model_param_specs(config_), dtype, device);
  for (int l = 0; l < config_.n_layers; ++l)
    if (config_.layer_kind(l) == AttentionKind::kMsa) ++n_msa_layers_;
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
  embedding_forward(tokens_, params_.at("embed.weight").value, x);

  AttentionBlockOptions attn_options;
  attn_options.msa_mode = options.msa_mode;
  attn_options.compute_index_grads = options.for_backward;
  attn_options.recall_query_stride = options.recall_query_stride;

  ForwardResult result;
  for (int l = 0; l < L; ++l) {
    residual_in_[l] = x;
    Tensor y = Tensor::empty({N, D}, dtype_, device_);
    attention_block_forward(config_, l, params_, x, batch_, T_, attn_options, attn_[l], y);
    Tensor mid = x.clone();
    add_inplace(mid, y);
    residual_mid_[l] = mid;
    mlp_block_forward(config_, l, params_, mid, mlp_[l], y);
    x = mid.clone();
    add_inplace(x, y);
    if (config_.layer_kind(l) == AttentionKind::kMsa) {
      result.index_loss += attn_[l].index_loss / n_msa_layers_;
      if (attn_[l].index_recall >= 0) result.index_recall.push_back(attn_[l].index_recall);
    }
  }
  x_final_ = x;
  xn_final_ = Tensor::empty({N, D}, dtype_, device_);
  rstd_final_ = Tensor::empty({N}, st, device_);
  rmsnorm_forward(x, params_.at("final_norm.weight").value, config_.norm_eps, xn_final_,
                  rstd_final_);
  logits_ = Tensor::empty({N, V}, dtype_, device_);
  const Parameter& head =
      config_.tied_embeddings ? params_.at("embed.weight") : params_.at("lm_head.weight");
  linear_forward(xn_final_, head.value, Tensor(), logits_);
  lse_ = Tensor::empty({N}, st, device_);
  CrossEntropyResult ce = cross_entropy_forward(logits_, targets_, kIgnoreIndex, lse_);
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

void Transformer::backward(double loss_scale, double index_scale, bool backbone) {
  MSA_CHECK(!attn_.empty(), "backward() without a forward(for_backward = true)");
  const int64_t N = batch_ * T_, D = config_.d_model;
  const int L = config_.n_layers;
  const double index_weight =
      n_msa_layers_ > 0 ? index_scale * config_.msa.index_loss_weight / n_msa_layers_ : 0.0;

  if (!backbone) {
    // Index warm-up: only the index branches learn; nothing flows through the backbone.
    for (int l = 0; l < L; ++l) {
      Tensor none;
      attention_block_backward(config_, l, params_, residual_in_[l], Tensor(), batch_, T_, attn_[l],
                               /*backbone=*/false, index_weight, none);
    }
    return;
  }

  Tensor none;
  Tensor& dlogits = logits_;  // in place: the [N, V] buffer is the largest activation
  cross_entropy_backward(logits_, targets_, lse_, kIgnoreIndex, n_targets_, loss_scale, dlogits);
  Parameter& head =
      config_.tied_embeddings ? params_.at("embed.weight") : params_.at("lm_head.weight");
  Tensor dxn = Tensor::empty({N, D}, dtype_, device_);
  linear_backward(dlogits, xn_final_, head.value, dxn, head.grad, none);
  Tensor dx = Tensor::empty({N, D}, dtype_, device_);
  Parameter& final_norm = params_.at("final_norm.weight");
  rmsnorm_backward(dxn, x_final_, final_norm.value, rstd_final_, dx, final_norm.grad);

  for (int l = L - 1; l >= 0; --l) {
    // x_out = mid + mlp(mid): d mid = dx + mlp'(dx).
    Tensor dmid;
    mlp_block_backward(config_, l, params_, residual_mid_[l], dx, mlp_[l], dmid);
    add_inplace(dmid, dx);
    // mid = x_in + attn(x_in).
    Tensor dx_in;
    attention_block_backward(config_, l, params_, residual_in_[l], dmid, batch_, T_, attn_[l],
                             /*backbone=*/true, index_weight, dx_in);
    add_inplace(dx_in, dmid);
    dx = dx_in;
  }
  embedding_backward(dx, tokens_, params_.at("embed.weight").grad);
}

}  // namespace msa
