// How the MSA index branch is wired into the model (DESIGN.md section 4): its parameters' shapes,
// gradients reach only where they should, the loss sums the layers' KL, and the index warm-up
// leaves the model's outputs unchanged.
#include <cmath>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/rope.h"
#include "model/transformer.h"
#include "tests/testing/msa_reference.h"

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
  c.msa.topk = 3;  // 24 tokens = 6 blocks: queries past block 2 attend to 3 of them
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

TEST(ModelMsaTest, IndexQueryHeadPerGroupAndOneSharedIndexKeyHead) {
  const ModelConfig c = msa_config();
  int found = 0;
  for (const ParamSpec& s : model_param_specs(c)) {
    if (s.name.find("index_wq") != std::string::npos) {
      EXPECT_EQ(s.shape, (Shape{c.n_kv_heads * c.msa.index_dim, c.d_model})) << s.name;
      EXPECT_EQ(s.tp_split, TpSplit::kRows) << s.name;  // each tp rank: its groups' heads
      EXPECT_TRUE(s.index_branch);
      ++found;
    }
    if (s.name.find("index_wk") != std::string::npos) {
      EXPECT_EQ(s.shape, (Shape{c.msa.index_dim, c.d_model})) << s.name;
      EXPECT_EQ(s.tp_split, TpSplit::kReplicated) << s.name;  // shared by every group
      EXPECT_TRUE(s.index_branch);
      ++found;
    }
  }
  EXPECT_EQ(found, 4);
}

TEST(ModelMsaTest, DefaultIndexDimIsThePapers) { EXPECT_EQ(MsaConfig{}.index_dim, 128); }

TEST(ModelMsaTest, LossIsLmPlusLambdaTimesTheSumOfTheLayersKl) {
  ModelConfig c = msa_config();
  c.msa.index_loss_weight = 0.3;
  Transformer model(c, DType::kF64, Device::kCPU);
  model.params().initialize(8);
  Tensor tokens, targets;
  make_batch(c, tokens, targets);
  for (MsaMode mode : {MsaMode::kSparse, MsaMode::kDenseWarmup}) {
    ForwardOptions options;
    options.msa_mode = mode;
    const ForwardResult r = model.forward(tokens, targets, options);
    ASSERT_EQ(r.layer_index_loss.size(), 2u);
    EXPECT_GT(r.layer_index_loss[0], 0.0);
    EXPECT_GT(r.layer_index_loss[1], 0.0);
    EXPECT_NE(r.layer_index_loss[0], r.layer_index_loss[1]);
    EXPECT_DOUBLE_EQ(r.index_loss, r.layer_index_loss[0] + r.layer_index_loss[1]);
    EXPECT_DOUBLE_EQ(r.total_loss, r.lm_loss + 0.3 * r.index_loss);
  }
}

TEST(ModelMsaTest, IndexBranchGradientScalesWithLambdaNotWithTheLayerCount) {
  // d L / d W_IQ of layer 0 is lambda * d L_KL(0) / d W_IQ: the same whether the model has one or
  // two MSA layers (a mean over layers would halve it).
  ModelConfig one = msa_config(), two = msa_config();
  one.attention = {AttentionKind::kMsa, AttentionKind::kDense};
  Transformer a(one, DType::kF64, Device::kCPU), b(two, DType::kF64, Device::kCPU);
  a.params().initialize(6);
  b.params().initialize(6);
  Tensor tokens, targets;
  make_batch(one, tokens, targets);
  a.forward(tokens, targets, ForwardOptions{});
  a.backward(1.0);
  b.forward(tokens, targets, ForwardOptions{});
  b.backward(1.0);
  for (const char* name : {"layers.0.attn.index_wq.weight", "layers.0.attn.index_wk.weight"}) {
    const auto x = a.params().at(name).grad.to_double_vector();
    const auto y = b.params().at(name).grad.to_double_vector();
    double nx = 0, diff = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      nx += x[i] * x[i];
      diff += (x[i] - y[i]) * (x[i] - y[i]);
    }
    EXPECT_GT(nx, 0.0) << name;
    EXPECT_LT(std::sqrt(diff), 1e-12 * std::sqrt(nx)) << name;
  }
}

TEST(ModelMsaTest, WithEveryBlockSelectedSparseEqualsDenseWarmup) {
  // k >= n_b: the selection is every causal block, so sparse attention is dense attention and the
  // sparse KL (over the selected tokens) is the dense-target KL (over every causal token).
  ModelConfig c = msa_config();
  c.msa.topk = 6;  // 24 tokens / B 4
  Transformer model(c, DType::kF64, Device::kCPU);
  model.params().initialize(12);
  Tensor tokens, targets;
  make_batch(c, tokens, targets);
  ForwardOptions sparse, warm;
  warm.msa_mode = MsaMode::kDenseWarmup;
  const ForwardResult s = model.forward(tokens, targets, sparse);
  const ForwardResult w = model.forward(tokens, targets, warm);
  EXPECT_NEAR(s.lm_loss, w.lm_loss, 1e-12 * w.lm_loss);
  ASSERT_EQ(s.layer_index_loss.size(), 2u);
  for (int l = 0; l < 2; ++l)
    EXPECT_NEAR(s.layer_index_loss[l], w.layer_index_loss[l], 1e-10 * w.layer_index_loss[l]);
}

TEST(ModelMsaTest, RecallsAreMeasuredPerLayerInBothModes) {
  const ModelConfig c = msa_config();
  Transformer model(c, DType::kF32, Device::kCPU);
  model.params().initialize(13);
  Tensor tokens, targets;
  make_batch(c, tokens, targets);
  for (MsaMode mode : {MsaMode::kSparse, MsaMode::kDenseWarmup}) {
    ForwardOptions options;
    options.msa_mode = mode;
    options.for_backward = false;
    options.recall_query_stride = 1;
    const ForwardResult r = model.forward(tokens, targets, options);
    ASSERT_EQ(r.index_recall.size(), 2u);
    ASSERT_EQ(r.block_recall.size(), 2u);
    ASSERT_EQ(r.index_recall_ceiling.size(), 2u);
    for (int l = 0; l < 2; ++l) {
      // Queries in the first k blocks see everything: both recalls are well above 0, at most 1.
      EXPECT_GT(r.index_recall[l], 0.3) << l;
      EXPECT_LE(r.index_recall[l], 1.0 + 1e-6) << l;
      EXPECT_GT(r.block_recall[l], 0.3) << l;
      EXPECT_LE(r.block_recall[l], 1.0 + 1e-12) << l;
      // The ceiling: at least the index recall of the same rows, at most 1.
      EXPECT_LE(r.index_recall[l], r.index_recall_ceiling[l] + 1e-12) << l;
      EXPECT_LE(r.index_recall_ceiling[l], 1.0 + 1e-12) << l;
    }
  }
  ForwardOptions plain;
  plain.for_backward = false;
  const ForwardResult none = model.forward(tokens, targets, plain);
  EXPECT_TRUE(none.index_recall.empty());
  EXPECT_TRUE(none.block_recall.empty());
  EXPECT_TRUE(none.index_recall_ceiling.empty());
}

// The recalls the model reports are those of its own tensors: layer 0's queries and keys (after
// RoPE) and index heads, rebuilt here by hand from the parameters (embedding, RMSNorm and
// projections in double), scored by the plain-loop reference of tests/testing/msa_reference.h.
// (The other recall tests check ranges or the model against itself: a wrong scale passed them.)
TEST(ModelMsaTest, LayerZeroRecallsEqualAReferenceOnTheModelsOwnTensors) {
  const ModelConfig c = msa_config();
  Transformer model(c, DType::kF32, Device::kCPU);
  model.params().initialize(15);
  // Peaked attention and index scores (at the initial 0.02 scale both are nearly uniform, and
  // the recalls hardly depend on what is measured).
  for (const char* name : {"layers.0.attn.wq.weight", "layers.0.attn.wk.weight",
                           "layers.0.attn.index_wq.weight", "layers.0.attn.index_wk.weight"}) {
    Tensor& w = model.params().find(name)->value;
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= 10.0f;
  }
  Tensor tokens, targets;
  make_batch(c, tokens, targets);
  ForwardOptions options;
  options.for_backward = false;
  options.recall_query_stride = 1;
  const ForwardResult r = model.forward(tokens, targets, options);
  ASSERT_EQ(r.index_recall.size(), 2u);

  const int64_t B = tokens.size(0), T = tokens.size(1), D = c.d_model, H = c.n_heads,
                G = c.n_kv_heads, d = c.head_dim, dI = c.msa.index_dim;
  auto param = [&](const std::string& name) {
    Parameter* p = model.params().find(name);
    EXPECT_NE(p, nullptr) << name;
    return p->value.to_double_vector();
  };
  const std::vector<double> embed = param("embed.weight"),
                            norm = param("layers.0.attn_norm.weight"),
                            wq = param("layers.0.attn.wq.weight"),
                            wk = param("layers.0.attn.wk.weight"),
                            wiq = param("layers.0.attn.index_wq.weight"),
                            wik = param("layers.0.attn.index_wk.weight");
  // The attention's input: RMSNorm of the token embeddings.
  std::vector<double> xn(B * T * D);
  for (int64_t i = 0; i < B * T; ++i) {
    const int64_t tok = tokens.data<int32_t>()[i];
    double ms = 0;
    for (int64_t j = 0; j < D; ++j) ms += embed[tok * D + j] * embed[tok * D + j];
    const double inv = 1.0 / std::sqrt(ms / D + c.norm_eps);
    for (int64_t j = 0; j < D; ++j) xn[i * D + j] = embed[tok * D + j] * inv * norm[j];
  }
  // y = xn W^T for W [rows, D].
  auto project = [&](const std::vector<double>& w, int64_t rows) {
    std::vector<double> y(B * T * rows, 0.0);
    for (int64_t i = 0; i < B * T; ++i)
      for (int64_t o = 0; o < rows; ++o)
        for (int64_t j = 0; j < D; ++j) y[i * rows + o] += xn[i * D + j] * w[o * D + j];
    return y;
  };
  // RoPE on the projections (the kernel, checked against transformers in tests/convert).
  auto rotate = [&](const std::vector<double>& x, int64_t heads) {
    Tensor t = Tensor::from_vector<double>({B, T, heads, d}, x).to(DType::kF32);
    Tensor y = Tensor::empty({B, T, heads, d}, DType::kF32);
    rope_forward(t, c.rope(), y);
    return y.to_double_vector();
  };
  const std::vector<double> q = rotate(project(wq, H * d), H), k = rotate(project(wk, G * d), G);
  const std::vector<double> iq = project(wiq, G * dI), ik = project(wik, dI);
  test::ref::Sizes z;
  z.batch = B, z.T = T, z.H = H, z.G = G, z.d = d, z.dI = dI;
  z.block_size = c.msa.block_size, z.topk = c.msa.topk;
  const test::ref::Selection selection = test::ref::select_blocks(iq, ik, z);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const test::ref::Queries every = test::ref::strided_queries(z, 1);
  EXPECT_NEAR(r.index_recall[0], test::ref::index_recall(selection, q, k, z, scale, every), 1e-5);
  EXPECT_NEAR(r.block_recall[0], test::ref::block_recall(selection, q, k, z, scale, every), 1e-9);
  // A control: the recall depends on the attention's scale, so a wiring that measured it at
  // another one could not pass the first check.
  EXPECT_GT(
      std::abs(test::ref::index_recall(selection, q, k, z, 2 * scale, every) - r.index_recall[0]),
      1e-3);
}

// The answer-position recalls are the kernels' recalls at the given queries, per MSA layer, in
// both modes and under recomputation (which drops and recomputes the attention activations): at
// the strided queries they equal the strided recalls to the bit; at two answer-like positions they
// are measured without any stride and differ from the strided mean.
TEST(ModelMsaTest, AnswerRecallsAreTheRecallsAtTheGivenQueries) {
  const ModelConfig c = msa_config();
  Transformer model(c, DType::kF32, Device::kCPU);
  model.params().initialize(14);
  Tensor tokens, targets;
  make_batch(c, tokens, targets);
  for (Recompute recompute : {Recompute::kNone, Recompute::kFull}) {
    model.set_recompute(recompute);
    for (MsaMode mode : {MsaMode::kSparse, MsaMode::kDenseWarmup}) {
      SCOPED_TRACE(testing::Message() << recompute_name(recompute) << " "
                                      << (mode == MsaMode::kSparse ? "sparse" : "warm-up"));
      ForwardOptions options;
      options.msa_mode = mode;
      options.recall_query_stride = 5;
      options.answer_positions = strided_recall_queries(2, 24, 5);
      const ForwardResult same = model.forward(tokens, targets, options);
      ASSERT_EQ(same.index_recall.size(), 2u);
      EXPECT_EQ(same.answer_index_recall, same.index_recall);
      EXPECT_EQ(same.answer_block_recall, same.block_recall);
      EXPECT_EQ(same.answer_index_recall_ceiling, same.index_recall_ceiling);
      model.backward(1.0);  // recomputation must not measure again or lose the values

      options.recall_query_stride = 0;
      options.answer_positions = {{0, 23}, {1, 22}};
      const ForwardResult answers = model.forward(tokens, targets, options);
      EXPECT_TRUE(answers.index_recall.empty());
      EXPECT_TRUE(answers.block_recall.empty());
      EXPECT_TRUE(answers.index_recall_ceiling.empty());
      ASSERT_EQ(answers.answer_index_recall.size(), 2u);
      ASSERT_EQ(answers.answer_block_recall.size(), 2u);
      ASSERT_EQ(answers.answer_index_recall_ceiling.size(), 2u);
      for (int l = 0; l < 2; ++l) {
        // Queries in the last block attend to 3 of 6 blocks: neither 0 nor 1 (nor NaN).
        EXPECT_GT(answers.answer_index_recall[l], 0.05) << l;
        EXPECT_LT(answers.answer_index_recall[l], 0.999) << l;
        EXPECT_GE(answers.answer_block_recall[l], 1.0 / 3.0) << l;  // the local block is shared
        EXPECT_LE(answers.answer_block_recall[l], 1.0) << l;
        EXPECT_NE(answers.answer_index_recall[l], same.index_recall[l]) << l;
        EXPECT_LE(answers.answer_index_recall[l], answers.answer_index_recall_ceiling[l] + 1e-12)
            << l;
        EXPECT_LT(answers.answer_index_recall_ceiling[l], 0.999) << l;
      }
    }
  }
  ForwardOptions plain;
  plain.for_backward = false;
  const ForwardResult none = model.forward(tokens, targets, plain);
  EXPECT_TRUE(none.answer_index_recall.empty());
  EXPECT_TRUE(none.answer_block_recall.empty());
  EXPECT_TRUE(none.answer_index_recall_ceiling.empty());
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
    ASSERT_EQ(p.value.to_double_vector(),
              msa_model.params().at(p.spec.name).value.to_double_vector());
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
    if (specs[i].index_branch)
      EXPECT_GT(norm, 0.0) << specs[i].name;
    else
      EXPECT_EQ(norm, 0.0) << specs[i].name;
  }
}

TEST(ModelMsaTest, FutureTokensDoNotChangeEarlierLogits) {
  // Causality through the whole MSA model (max-pooled scores, top-k, sparse attention, every
  // layer): tokens after position t change no logit at or before t.
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
