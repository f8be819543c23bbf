#include "model/parameters.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "core/rng.h"
#include "model/tensor_parallel.h"

namespace msa {

std::vector<ParamSpec> model_param_specs(const ModelConfig& c) {
  std::vector<ParamSpec> specs;
  const int64_t D = c.d_model, H = c.n_heads, G = c.n_kv_heads, d = c.head_dim, F = c.ffn_dim;
  // Residual-branch output projections start smaller so the residual stream's variance does not
  // grow with depth (GPT-2 / Megatron convention).
  const double out_std = 0.02 / std::sqrt(2.0 * c.n_layers);
  auto norm = [&](std::string name, int64_t n) {
    specs.push_back(
        {std::move(name), {n}, ParamInit::kOnes, 0, false, false, TpSplit::kReplicated});
  };
  auto weight = [&](std::string name, Shape shape, double std, TpSplit split, bool index = false) {
    specs.push_back(
        {std::move(name), std::move(shape), ParamInit::kNormal, std, true, index, split});
  };
  auto bias = [&](std::string name, int64_t n, TpSplit split) {
    specs.push_back({std::move(name), {n}, ParamInit::kZeros, 0, false, false, split});
  };
  weight("embed.weight", {c.vocab_size, D}, 0.02, TpSplit::kRows);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = layer_param_name(l, "");
    norm(p + "attn_norm.weight", D);
    weight(p + "attn.wq.weight", {H * d, D}, 0.02, TpSplit::kRows);
    if (c.qkv_bias) bias(p + "attn.wq.bias", H * d, TpSplit::kRows);
    weight(p + "attn.wk.weight", {G * d, D}, 0.02, TpSplit::kRows);
    if (c.qkv_bias) bias(p + "attn.wk.bias", G * d, TpSplit::kRows);
    weight(p + "attn.wv.weight", {G * d, D}, 0.02, TpSplit::kRows);
    if (c.qkv_bias) bias(p + "attn.wv.bias", G * d, TpSplit::kRows);
    if (c.qk_norm) {
      norm(p + "attn.q_norm.weight", d);
      norm(p + "attn.k_norm.weight", d);
    }
    if (c.layer_kind(l) == AttentionKind::kMsa) {
      // Index projections: unit-variance scores at init (std 1/sqrt(D) for unit-variance inputs).
      // One index query head per KV group (split with its group), one index key head shared by
      // all groups (replicated: every tp rank selects for its groups without communication).
      const double index_std = 1.0 / std::sqrt(static_cast<double>(D));
      weight(p + "attn.index_wq.weight", {G * c.msa.index_dim, D}, index_std, TpSplit::kRows, true);
      weight(p + "attn.index_wk.weight", {c.msa.index_dim, D}, index_std, TpSplit::kReplicated,
             true);
    }
    weight(p + "attn.wo.weight", {D, H * d}, out_std, TpSplit::kCols);
    norm(p + "mlp_norm.weight", D);
    weight(p + "mlp.w_gate.weight", {F, D}, 0.02, TpSplit::kRows);
    weight(p + "mlp.w_up.weight", {F, D}, 0.02, TpSplit::kRows);
    weight(p + "mlp.w_down.weight", {D, F}, out_std, TpSplit::kCols);
  }
  norm("final_norm.weight", D);
  if (!c.tied_embeddings) weight("lm_head.weight", {c.vocab_size, D}, 0.02, TpSplit::kRows);
  return specs;
}

ParameterSet ParameterSet::allocate(const std::vector<ParamSpec>& specs, DType dtype,
                                    Device device) {
  ParameterSet set;
  const DType grad_dtype = device == Device::kCUDA ? DType::kF32 : dtype;
  for (const ParamSpec& spec : specs) {
    MSA_CHECK(!set.index_.contains(spec.name), "duplicate parameter %s", spec.name);
    set.index_[spec.name] = set.params_.size();
    set.params_.push_back({spec, Tensor::zeros(spec.shape, dtype, device),
                           Tensor::zeros(spec.shape, grad_dtype, device)});
  }
  return set;
}

void ParameterSet::initialize(uint64_t seed, int tp_rank, int tp_size) {
  for (Parameter& p : params_) {
    switch (p.spec.init) {
      case ParamInit::kNormal:
        if (tp_size > 1 && p.spec.tp_split != TpSplit::kReplicated) {
          Tensor full =
              Tensor::empty(full_shape(p.value.shape(), p.spec.tp_split, tp_size), DType::kF32);
          fill_normal(full, rng_substream(seed, fnv1a64(p.spec.name)), 0.0f,
                      static_cast<float>(p.spec.init_std));
          p.value.copy_from(tp_slice(full, p.spec.tp_split, tp_rank, tp_size)
                                .to(p.value.dtype())
                                .to(p.value.device()));
          break;
        }
        fill_normal(p.value, rng_substream(seed, fnv1a64(p.spec.name)), 0.0f,
                    static_cast<float>(p.spec.init_std));
        break;
      case ParamInit::kOnes:
        p.value.fill_(1.0);
        break;
      case ParamInit::kZeros:
        p.value.zero_();
        break;
    }
  }
}

Parameter& ParameterSet::at(const std::string& name) {
  Parameter* p = find(name);
  MSA_CHECK(p != nullptr, "no parameter named %s", name);
  return *p;
}

const Parameter& ParameterSet::at(const std::string& name) const {
  auto it = index_.find(name);
  MSA_CHECK(it != index_.end(), "no parameter named %s", name);
  return params_[it->second];
}

Parameter* ParameterSet::find(const std::string& name) {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

int64_t ParameterSet::numel() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += p.value.numel();
  return n;
}

void ParameterSet::zero_grads() {
  for (Parameter& p : params_) p.grad.zero_();
}

std::string layer_param_name(int layer, const std::string& suffix) {
  return absl::StrFormat("layers.%d.%s", layer, suffix);
}

}  // namespace msa
