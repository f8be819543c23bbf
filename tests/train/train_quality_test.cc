// Long-context quality, CPU-sized (issue: long-context quality): the same tiny model trained on
// key-value retrieval at 512 tokens = 8x the MSA budget k * B = 4 * 16, with dense attention and
// with MSA (after a dense-attention phase, see docs/quality.md), evaluated on held-out samples.
// Measured with these seeds: dense 74.6%, MSA 66.8% (chance 12.5%): the 5-point target is not
// met yet; the test pins what holds (both learn far above chance, MSA within 15 points) and
// prints the numbers. About 8 minutes on two cores.
#include <cstdio>

#include "gtest/gtest.h"
#include "model/transformer.h"
#include "train/batch_source.h"
#include "train/optimizer.h"
#include "train/retrieval_eval.h"
#include "train/trainer.h"

namespace msa {
namespace {

RetrievalResult train_and_evaluate(AttentionKind kind, int64_t dense_attention_steps) {
  ModelConfig c;
  c.vocab_size = kSyntheticVocab;
  c.d_model = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.ffn_dim = 128;
  c.attention = {kind, kind};
  c.msa.block_size = 16;
  c.msa.topk = 4;
  c.msa.index_dim = 16;
  const int64_t T = 512, batch = 8, steps = 800;
  Transformer model(c, DType::kF32, Device::kCPU);
  model.params().initialize(1);
  AdamW optimizer(model.params(), OptimizerConfig{});
  auto data = make_synthetic_source("kv-recall", c.vocab_size, batch, T, 4, /*depth=*/0.0, 7,
                                    DataLayout{}, false);
  EXPECT_TRUE(data.ok());
  TrainerConfig tc;
  tc.steps = steps;
  tc.dense_attention_steps = dense_attention_steps;
  tc.lr.max_lr = 5e-3;
  tc.lr.min_lr = 5e-4;
  tc.lr.warmup_steps = 20;
  tc.lr.total_steps = steps;
  tc.log_every = 100;
  Trainer trainer(model, optimizer, **data, tc);
  EXPECT_TRUE(trainer.run(1).ok());
  SyntheticConfig held_out;
  held_out.seq_len = T;
  held_out.pairs = 4;
  held_out.depth = 0.0;
  held_out.seed = 12345;
  return evaluate_retrieval(model, held_out, 64, 16, MsaMode::kSparse,
                            kind == AttentionKind::kMsa ? 8 : 0);
}

TEST(TrainQualityTest, MsaRetrievalAtEightTimesTheBudgetComparedWithDense) {
  const RetrievalResult dense = train_and_evaluate(AttentionKind::kDense, 0);
  const RetrievalResult msa = train_and_evaluate(AttentionKind::kMsa, 500);
  std::printf("retrieval accuracy at 512 tokens (8x the budget): dense %.1f%%, MSA %.1f%% "
              "(index recall L0 %.3f, L1 %.3f)\n",
              100 * dense.accuracy, 100 * msa.accuracy, msa.index_recall[0], msa.index_recall[1]);
  EXPECT_GT(dense.accuracy, 0.5);
  EXPECT_GT(msa.accuracy, 0.5);
  EXPECT_GT(msa.accuracy, dense.accuracy - 0.15);
}

}  // namespace
}  // namespace msa
