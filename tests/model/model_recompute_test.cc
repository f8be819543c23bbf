// Activation recomputation changes memory, never results: with --recompute=attention or full the
// loss and every parameter gradient are bit-identical to keeping all activations, for dense, MSA
// (sparse and dense-warm-up modes, index warm-up backward) and Qwen-style layers.
#include <string>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "model/transformer.h"

namespace msa {
namespace {

ModelConfig config_for(const std::string& kind) {
  ModelConfig c;
  c.vocab_size = 29;
  c.d_model = 16;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 24;
  if (kind == "msa") {
    c.attention = {AttentionKind::kMsa, AttentionKind::kDense, AttentionKind::kMsa};
    c.msa.block_size = 4;
    c.msa.topk = 3;
    c.msa.index_dim = 4;
  } else if (kind == "qwen") {
    c.qkv_bias = true;
    c.qk_norm = true;
    c.tied_embeddings = true;
  }
  return c;
}

struct StepResult {
  double loss = 0;
  std::vector<std::vector<double>> grads;
};

StepResult run(const ModelConfig& c, Recompute r, MsaMode mode, bool backbone) {
  Transformer model(c, DType::kF32, Device::kCPU);
  model.set_recompute(r);
  model.params().initialize(5);
  Tensor tokens = Tensor::empty({2, 21}, DType::kI32), targets = tokens.clone();
  for (int64_t i = 0; i < tokens.numel(); ++i) {
    tokens.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(8, i).v[0] % c.vocab_size);
    targets.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(8, i).v[1] % c.vocab_size);
  }
  ForwardOptions options;
  options.msa_mode = mode;
  StepResult s;
  s.loss = model.forward(tokens, targets, options).total_loss;
  model.backward(1.0, backbone);
  for (const Parameter& p : model.params().all()) s.grads.push_back(p.grad.to_double_vector());
  return s;
}

class RecomputeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RecomputeTest, LossAndGradientsBitIdentical) {
  const ModelConfig c = config_for(GetParam());
  for (MsaMode mode : {MsaMode::kSparse, MsaMode::kDenseWarmup}) {
    for (bool backbone : {true, false}) {
      if (!backbone && !c.any_msa()) continue;
      const StepResult ref = run(c, Recompute::kNone, mode, backbone);
      for (Recompute r : {Recompute::kAttention, Recompute::kFull}) {
        const StepResult got = run(c, r, mode, backbone);
        EXPECT_EQ(got.loss, ref.loss) << recompute_name(r);
        ASSERT_EQ(got.grads.size(), ref.grads.size());
        for (size_t i = 0; i < ref.grads.size(); ++i)
          EXPECT_EQ(got.grads[i], ref.grads[i])
              << "parameter " << i << ", recompute " << recompute_name(r) << ", backbone "
              << backbone;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, RecomputeTest, ::testing::Values("dense", "msa", "qwen"));

TEST(RecomputeTest, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(*parse_recompute("none"), Recompute::kNone);
  EXPECT_EQ(*parse_recompute("attention"), Recompute::kAttention);
  EXPECT_EQ(*parse_recompute("full"), Recompute::kFull);
  const auto bad = parse_recompute("some");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--recompute"), std::string::npos);
}

}  // namespace
}  // namespace msa
