// Whole-model backward against central finite differences in float64, on tiny configs, for a
// sample of the entries of every parameter; for MSA layers through the index branch too (W_IQ
// [G d_I, D], the shared W_IK [d_I, D], token-level KL in sparse and warm-up modes).
#include <algorithm>
#include <cmath>
#include <functional>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "model/transformer.h"

namespace msa {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.ffn_dim = 12;
  c.rope_theta = 100.0;
  c.attention = {AttentionKind::kDense, AttentionKind::kDense};
  return c;
}

void random_batch(const ModelConfig& c, int64_t batch, int64_t T, uint64_t seed, Tensor& tokens,
                  Tensor& targets) {
  tokens = Tensor::empty({batch, T}, DType::kI32);
  targets = Tensor::empty({batch, T}, DType::kI32);
  for (int64_t i = 0; i < batch * T; ++i) {
    tokens.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(seed, i).v[0] % c.vocab_size);
    targets.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(seed, i).v[1] % c.vocab_size);
  }
  targets.data<int32_t>()[1] = kIgnoreIndex;  // one ignored target
}

// Perturbs the weights to larger, non-symmetric values so every path carries signal (norm
// weights away from 1, biases away from 0).
void randomize(Transformer& model, uint64_t seed) {
  int i = 0;
  for (Parameter& p : model.params().all()) {
    fill_normal(p.value, seed + i++, 0.0f, 0.5f);
    if (p.spec.init == ParamInit::kOnes) {
      double* v = p.value.data<double>();
      for (int64_t j = 0; j < p.value.numel(); ++j) v[j] += 1.0;
    }
  }
}

// Checks dL/dparam for up to `samples` entries of every parameter; `loss_of` returns the loss
// whose gradient backward() computed.
void check_all_params(Transformer& model, const Tensor& tokens, const Tensor& targets,
                      const ForwardOptions& options, bool lm_only, int samples,
                      const std::function<bool(const ParamSpec&)>& which) {
  auto loss = [&]() {
    ForwardOptions eval = options;
    eval.for_backward = false;
    ForwardResult r = model.forward(tokens, targets, eval);
    return lm_only ? r.lm_loss : r.total_loss;
  };
  model.params().zero_grads();
  model.forward(tokens, targets, options);
  model.backward(1.0);
  const double eps = 1e-5;  // balances truncation (eps^2) against round-off (1e-16 / eps)
  for (Parameter& p : model.params().all()) {
    if (!which(p.spec)) continue;
    double* w = p.value.data<double>();
    const double* g = p.grad.data<double>();
    for (int s = 0; s < samples; ++s) {
      int64_t j = philox4x32(99, s + 1000 * p.spec.name.size()).v[0] % p.value.numel();
      const double orig = w[j];
      w[j] = orig + eps;
      const double up = loss();
      w[j] = orig - eps;
      const double down = loss();
      w[j] = orig;
      const double fd = (up - down) / (2 * eps);
      const double denom = std::max({std::abs(fd), std::abs(g[j]), 1e-7});
      EXPECT_LT(std::abs(fd - g[j]) / denom, 1e-6)
          << p.spec.name << "[" << j << "]: analytic " << g[j] << " vs finite difference " << fd;
    }
  }
}

TEST(ModelGradcheckTest, DenseGqaModelMatchesFiniteDifferences) {
  ModelConfig c = tiny_config();
  Transformer model(c, DType::kF64, Device::kCPU);
  randomize(model, 1);
  Tensor tokens, targets;
  random_batch(c, 2, 6, 7, tokens, targets);
  check_all_params(model, tokens, targets, ForwardOptions{}, /*lm_only=*/true, 4,
                   [](const ParamSpec&) { return true; });
}

TEST(ModelGradcheckTest, QwenStyleBiasQkNormTiedEmbeddings) {
  ModelConfig c = tiny_config();
  c.qkv_bias = true;
  c.qk_norm = true;
  c.tied_embeddings = true;
  Transformer model(c, DType::kF64, Device::kCPU);
  randomize(model, 2);
  Tensor tokens, targets;
  random_batch(c, 2, 5, 8, tokens, targets);
  check_all_params(model, tokens, targets, ForwardOptions{}, /*lm_only=*/true, 4,
                   [](const ParamSpec&) { return true; });
}

ModelConfig tiny_msa_config() {
  ModelConfig c = tiny_config();
  c.attention = {AttentionKind::kMsa, AttentionKind::kDense};
  c.msa.block_size = 2;
  c.msa.topk = 3;
  c.msa.index_dim = 3;
  return c;
}

TEST(ModelGradcheckTest, MsaModelBackboneGradientIsLmLossGradient) {
  ModelConfig c = tiny_msa_config();
  Transformer model(c, DType::kF64, Device::kCPU);
  randomize(model, 3);
  Tensor tokens, targets;
  random_batch(c, 2, 11, 9, tokens, targets);
  // The index loss's target is detached and top-k is piecewise constant: the backbone's gradient
  // is the LM loss's gradient (with the selection held fixed, as it is for small perturbations).
  check_all_params(model, tokens, targets, ForwardOptions{}, /*lm_only=*/true, 3,
                   [](const ParamSpec& s) { return !s.index_branch; });
}

TEST(ModelGradcheckTest, MsaIndexBranchGradientIsWeightedIndexLossGradient) {
  ModelConfig c = tiny_msa_config();
  c.msa.index_loss_weight = 0.7;
  Transformer model(c, DType::kF64, Device::kCPU);
  randomize(model, 4);
  Tensor tokens, targets;
  random_batch(c, 2, 11, 10, tokens, targets);
  check_all_params(model, tokens, targets, ForwardOptions{}, /*lm_only=*/false, 6,
                   [](const ParamSpec& s) { return s.index_branch; });
}

// The index branch's gradient (W_IQ, W_IK of every MSA layer) against finite differences of the
// total loss, in the sparse and the warm-up mode.
void check_index_gradients_in_both_modes(const ModelConfig& c, uint64_t weight_seed,
                                         uint64_t batch_seed) {
  Transformer model(c, DType::kF64, Device::kCPU);
  randomize(model, weight_seed);
  Tensor tokens, targets;
  random_batch(c, 2, 9, batch_seed, tokens, targets);
  for (MsaMode mode : {MsaMode::kSparse, MsaMode::kDenseWarmup}) {
    ForwardOptions options;
    options.msa_mode = mode;
    check_all_params(model, tokens, targets, options, /*lm_only=*/false, 6,
                     [](const ParamSpec& s) { return s.index_branch; });
  }
}

TEST(ModelGradcheckTest, TwoMsaLayersIndexGradientIsLambdaTimesTheSumOfLayerLosses) {
  // Both layers MSA: total_loss = lm + lambda * (KL_0 + KL_1); W_IQ / W_IK of each layer (the
  // shared index key head included) get exactly their layer's lambda * d KL_l.
  ModelConfig c = tiny_msa_config();
  c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
  c.msa.index_loss_weight = 1.3;
  check_index_gradients_in_both_modes(c, 6, 12);
}

TEST(ModelGradcheckTest, WarmupBackboneGradientIsLmLossGradientThroughDenseAttention) {
  ModelConfig c = tiny_msa_config();
  Transformer model(c, DType::kF64, Device::kCPU);
  randomize(model, 7);
  Tensor tokens, targets;
  random_batch(c, 2, 9, 13, tokens, targets);
  ForwardOptions options;
  options.msa_mode = MsaMode::kDenseWarmup;
  check_all_params(model, tokens, targets, options, /*lm_only=*/true, 3,
                   [](const ParamSpec& s) { return !s.index_branch; });
}

TEST(ModelGradcheckTest, IndexWarmupTrainsIndexBranchOnDenseTargetLoss) {
  ModelConfig c = tiny_msa_config();
  Transformer model(c, DType::kF64, Device::kCPU);
  randomize(model, 5);
  Tensor tokens, targets;
  random_batch(c, 1, 11, 11, tokens, targets);
  ForwardOptions options;
  options.msa_mode = MsaMode::kDenseWarmup;
  check_all_params(model, tokens, targets, options, /*lm_only=*/false, 6,
                   [](const ParamSpec& s) { return s.index_branch; });
}

TEST(ModelGradcheckTest, RotatedIndexBranchGradientIsWeightedIndexLossGradient) {
  // The option of RoPE on the leading index dims (not the paper's): the index weights' gradient
  // goes back through the rotation's transpose, in both modes.
  ModelConfig c = tiny_msa_config();
  c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
  c.msa.index_dim = 4;
  c.msa.index_rotary_dim = 2;
  c.msa.index_loss_weight = 0.9;
  check_index_gradients_in_both_modes(c, 8, 14);
}

}  // namespace
}  // namespace msa
