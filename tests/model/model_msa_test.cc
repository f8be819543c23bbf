// How the MSA index branch is wired into the model: gradients reach only where they should, and
// the index warm-up leaves the model's outputs unchanged.
#include "core/rng.h"
#include "gtest/gtest.h"
#include "model/transformer.h"

namespace msa {
namespace {

ModelConfig msa_config() {
  ModelConfig c;
  c.vocab_size = 23;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 24;
  c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
  c.msa.block_size = 4;
  c.msa.topk = 3;  // two non-local blocks: the sparse index loss needs |S'| >= 2
  c.msa.index_dim = 4;
  return c;
}

void make_batch(const ModelConfig& c, Tensor& tokens, Tensor& targets) {
  tokens = Tensor::empty({2, 24}, DType::kI32);
  targets = Tensor::empty({2, 24}, DType::kI32);
  for (int64_t i = 0; i < tokens.numel(); ++i) {
    tokens.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(3, i).v[0] % c.vocab_size);
    targets.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(3, i).v[1] % c.vocab_size);
  }
}

std::vector<std::vector<double>> grads_after_step(const ModelConfig& c, bool backbone = true,
                                                  MsaMode mode = MsaMode::kSparse) {
  Transformer model(c, DType::kF32, Device::kCPU);
  model.params().initialize(42);
  Tensor tokens, targets;
  make_batch(c, tokens, targets);
  ForwardOptions options;
  options.msa_mode = mode;
  model.forward(tokens, targets, options);
  model.backward(1.0, backbone);
  std::vector<std::vector<double>> grads;
  for (const Parameter& p : model.params().all()) grads.push_back(p.grad.to_double_vector());
  return grads;
}

TEST(ModelMsaTest, IndexLossDoesNotChangeBackboneGradients) {
  ModelConfig c0 = msa_config(), c1 = msa_config();
  c0.msa.index_loss_weight = 0.0;
  c1.msa.index_loss_weight = 1.0;
  auto g0 = grads_after_step(c0), g1 = grads_after_step(c1);
  auto specs = model_param_specs(c0);
  int index_params = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].index_branch) {
      ++index_params;
      // lambda = 0: the LM loss alone gives W_IQ / W_IK exactly zero gradient.
      for (double g : g0[i]) ASSERT_EQ(g, 0.0) << specs[i].name;
      double norm = 0;
      for (double g : g1[i]) norm += g * g;
      EXPECT_GT(norm, 0.0) << specs[i].name << " gets no gradient from the index loss";
    } else {
      EXPECT_EQ(g0[i], g1[i]) << specs[i].name << " changed with lambda_idx";
    }
  }
  EXPECT_EQ(index_params, 4);
}

TEST(ModelMsaTest, IndexWarmupKeepsDenseOutputsBitForBit) {
  ModelConfig msa = msa_config();
  ModelConfig dense = msa;
  dense.attention = {AttentionKind::kDense, AttentionKind::kDense};
  Transformer msa_model(msa, DType::kF32, Device::kCPU);
  Transformer dense_model(dense, DType::kF32, Device::kCPU);
  msa_model.params().initialize(5);
  dense_model.params().initialize(5);  // per-name RNG streams: the shared weights are identical
  for (Parameter& p : dense_model.params().all())
    ASSERT_EQ(p.value.to_double_vector(), msa_model.params().at(p.spec.name).value.to_double_vector());
  Tensor tokens, targets;
  make_batch(msa, tokens, targets);
  ForwardOptions warm;
  warm.msa_mode = MsaMode::kDenseWarmup;
  ForwardResult a = msa_model.forward(tokens, targets, warm);
  ForwardResult b = dense_model.forward(tokens, targets, ForwardOptions{});
  EXPECT_EQ(a.lm_loss, b.lm_loss);
  EXPECT_EQ(msa_model.logits().to_double_vector(), dense_model.logits().to_double_vector());
  EXPECT_GT(a.index_loss, 0.0);
}

TEST(ModelMsaTest, WarmupBackwardTouchesOnlyTheIndexBranch) {
  auto g = grads_after_step(msa_config(), /*backbone=*/false, MsaMode::kDenseWarmup);
  auto specs = model_param_specs(msa_config());
  for (size_t i = 0; i < specs.size(); ++i) {
    double norm = 0;
    for (double x : g[i]) norm += x * x;
    if (specs[i].index_branch) EXPECT_GT(norm, 0.0) << specs[i].name;
    else EXPECT_EQ(norm, 0.0) << specs[i].name;
  }
}

TEST(ModelMsaTest, FutureTokensDoNotChangeEarlierLogits) {
  // Causality through the whole MSA model (pooling, top-k, sparse attention, every layer): tokens
  // after position t change no logit at or before t.
  ModelConfig c = msa_config();
  Transformer model(c, DType::kF32, Device::kCPU);
  model.params().initialize(11);
  Tensor tokens, targets;
  make_batch(c, tokens, targets);
  ForwardOptions eval;
  eval.for_backward = false;
  model.forward(tokens, targets, eval);
  const std::vector<double> before = model.logits().to_double_vector();
  const int64_t T = tokens.size(1), V = c.vocab_size;
  for (int64_t t : {3, 9, 17}) {
    Tensor changed = tokens.clone();
    for (int64_t b = 0; b < tokens.size(0); ++b)
      for (int64_t s = t + 1; s < T; ++s)
        changed.data<int32_t>()[b * T + s] = (tokens.data<int32_t>()[b * T + s] + 1 + s) % V;
    model.forward(changed, targets, eval);
    const std::vector<double> after = model.logits().to_double_vector();
    for (int64_t b = 0; b < tokens.size(0); ++b)
      for (int64_t s = 0; s <= t; ++s)
        for (int64_t v = 0; v < V; ++v)
          ASSERT_EQ(before[(b * T + s) * V + v], after[(b * T + s) * V + v])
              << "logit of token " << s << " changed when tokens after " << t << " changed";
  }
}

}  // namespace
}  // namespace msa
