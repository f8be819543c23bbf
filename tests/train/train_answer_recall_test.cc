// The recalls at the answer positions, as msa-eval (evaluate_retrieval) and msa-train's validation
// (evaluate) measure them: the answers of a synthetic retrieval task are its last `pairs` positions
// (data/synthetic.h), and the result is the mean over every answer, so a short last batch weighs
// by its answers, not as a whole batch. Checked against forwards at those positions written out
// here, on a tiny untrained MSA model (recalls well inside (0, 1)).
#include <cstdint>
#include <vector>

#include "data/synthetic.h"
#include "gtest/gtest.h"
#include "model/transformer.h"
#include "tests/testing/gradcheck.h"
#include "train/batch_source.h"
#include "train/evaluator.h"
#include "train/retrieval_eval.h"

namespace msa {
namespace {

using test::max_scaled_diff;

ModelConfig tiny_msa() {
  ModelConfig c;
  c.vocab_size = 96;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 32;
  c.attention = {AttentionKind::kMsa, AttentionKind::kDense};  // one MSA layer: one value each
  c.msa.block_size = 4;
  c.msa.topk = 2;
  c.msa.index_dim = 4;
  return c;
}

// The MSA layer's index recall, block recall and recall ceiling at the last `pairs` positions of
// every row of `tokens`.
std::vector<double> recalls_at_last(Transformer& model, const Tensor& tokens, const Tensor& targets,
                                    int pairs) {
  const int64_t n = tokens.size(0), T = tokens.size(1);
  ForwardOptions options;
  options.for_backward = false;
  for (int64_t b = 0; b < n; ++b)
    for (int64_t t = T - pairs; t < T; ++t) options.answer_positions.push_back({b, t});
  const ForwardResult f = model.forward(tokens, targets, options);
  EXPECT_EQ(f.answer_index_recall.size(), 1u);
  EXPECT_EQ(f.answer_block_recall.size(), 1u);
  EXPECT_EQ(f.answer_index_recall_ceiling.size(), 1u);
  if (f.answer_index_recall.size() != 1 || f.answer_block_recall.size() != 1 ||
      f.answer_index_recall_ceiling.size() != 1)
    return {-1, -1, -1};
  return {f.answer_index_recall[0], f.answer_block_recall[0], f.answer_index_recall_ceiling[0]};
}

// kv-recall, 40 tokens, 3 facts.
SyntheticConfig kv_recall_40() {
  SyntheticConfig task;
  task.seq_len = 40;
  task.pairs = 3;
  task.seed = 77;
  return task;
}

TEST(TrainAnswerRecallTest, RetrievalEvalAveragesOverEveryAnswer) {
  Transformer model(tiny_msa(), DType::kF32, Device::kCPU);
  model.params().initialize(3);
  const SyntheticConfig task = kv_recall_40();
  // 5 samples in batches of 2: 6, 6 and 3 answers.
  const RetrievalResult r =
      evaluate_retrieval(model, task, 5, 2, MsaMode::kSparse, /*recall_stride=*/0, true);
  EXPECT_TRUE(r.index_recall.empty());  // no stride: only the answers are measured
  std::vector<double> want = {0, 0, 0};
  for (int64_t start = 0; start < 5; start += 2) {
    const int64_t n = std::min<int64_t>(2, 5 - start);
    Tensor tokens = Tensor::empty({n, 40}, DType::kI32), targets = tokens.clone();
    for (int64_t i = 0; i < n; ++i) {
      const SyntheticSample s = make_synthetic_sample(task, start + i);
      for (int64_t t = 0; t < 40; ++t) {
        tokens.data<int32_t>()[i * 40 + t] = s.tokens[t];
        targets.data<int32_t>()[i * 40 + t] = s.targets[t];
      }
    }
    const std::vector<double> got = recalls_at_last(model, tokens, targets, 3);
    for (int k = 0; k < 3; ++k) want[k] += got[k] * static_cast<double>(3 * n) / 15.0;
  }
  EXPECT_LT(max_scaled_diff(r.answer_index_recall, {want[0]}), 1e-12);
  EXPECT_LT(max_scaled_diff(r.answer_block_recall, {want[1]}), 1e-12);
  EXPECT_LT(max_scaled_diff(r.answer_index_recall_ceiling, {want[2]}), 1e-12);
  EXPECT_GT(want[0], 0.05);
  EXPECT_LT(want[0], 0.95);
  EXPECT_LE(want[0], want[2] + 1e-12);
  EXPECT_LT(want[2], 0.999);

  const RetrievalResult off =
      evaluate_retrieval(model, task, 5, 2, MsaMode::kSparse, /*recall_stride=*/0, false);
  EXPECT_TRUE(off.answer_index_recall.empty());
  EXPECT_TRUE(off.answer_block_recall.empty());
  EXPECT_TRUE(off.answer_index_recall_ceiling.empty());
}

// The strided recalls are means over every sampled query of every sample, whatever the batch:
// 5 samples in batches of 4 gave the lone fifth sample half the weight (a mean over batches).
TEST(TrainAnswerRecallTest, StridedRecallsDoNotDependOnTheBatch) {
  Transformer model(tiny_msa(), DType::kF32, Device::kCPU);
  model.params().initialize(3);
  const SyntheticConfig task = kv_recall_40();
  const RetrievalResult one =
      evaluate_retrieval(model, task, 5, 1, MsaMode::kSparse, /*recall_stride=*/4, false);
  ASSERT_EQ(one.index_recall.size(), 1u);
  for (int64_t batch : {2, 4, 5}) {
    const RetrievalResult r =
        evaluate_retrieval(model, task, 5, batch, MsaMode::kSparse, /*recall_stride=*/4, false);
    EXPECT_LT(max_scaled_diff(r.index_recall, one.index_recall), 1e-12) << batch;
    EXPECT_LT(max_scaled_diff(r.block_recall, one.block_recall), 1e-12) << batch;
    EXPECT_LT(max_scaled_diff(r.index_recall_ceiling, one.index_recall_ceiling), 1e-12) << batch;
    EXPECT_LT(max_scaled_diff(r.max_pool_recall_ceiling, one.max_pool_recall_ceiling), 1e-12)
        << batch;
  }
  EXPECT_GT(one.index_recall[0], 0.05);
  EXPECT_LT(one.index_recall[0], 0.999);
}

TEST(TrainAnswerRecallTest, ValidationMeasuresAtTheCountedTargets) {
  Transformer model(tiny_msa(), DType::kF32, Device::kCPU);
  model.params().initialize(4);
  auto source = make_synthetic_source("kv-recall", 96, 2, 40, 3, -1, 5, DataLayout{}, true);
  ASSERT_TRUE(source.ok());
  const EvalResult r = evaluate(model, **source, 2, MsaMode::kSparse, /*answer_recall=*/true);
  std::vector<double> want = {0, 0, 0};
  for (int i = 1; i <= 2; ++i) {  // evaluate() reads batches 1..n_batches, 6 answers each
    const Batch b = (*source)->get(i, 0);
    const std::vector<double> got = recalls_at_last(model, b.tokens, b.targets, 3);
    for (int k = 0; k < 3; ++k) want[k] += got[k] / 2;
  }
  EXPECT_LT(max_scaled_diff(r.answer_index_recall, {want[0]}), 1e-12);
  EXPECT_LT(max_scaled_diff(r.answer_block_recall, {want[1]}), 1e-12);
  EXPECT_LT(max_scaled_diff(r.answer_index_recall_ceiling, {want[2]}), 1e-12);
  EXPECT_GT(want[0], 0.05);
  EXPECT_LT(want[0], 0.95);
  // Off by default (text: every position is a target).
  EXPECT_TRUE(evaluate(model, **source, 2, MsaMode::kSparse).answer_index_recall.empty());
}

}  // namespace
}  // namespace msa
