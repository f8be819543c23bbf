// The tiny retrieval setup shared by the learning tests: a 2-layer model (block size 16, top-4 by
// default) trained on synthetic kv-recall with the facts at the start, evaluated on held-out
// samples.
#pragma once

#include <cstdio>

#include "gtest/gtest.h"
#include "model/transformer.h"
#include "train/batch_source.h"
#include "train/optimizer.h"
#include "train/retrieval_eval.h"
#include "train/trainer.h"

namespace msa::test {

inline ModelConfig tiny_retrieval_model(AttentionKind kind, int topk = 4) {
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
  c.msa.topk = topk;
  c.msa.index_dim = 16;
  return c;
}

// Samples never drawn in training (training uses seed 7).
inline SyntheticConfig held_out_task(int64_t T) {
  SyntheticConfig task;
  task.seq_len = T;
  task.pairs = 4;
  task.depth = 0.0;
  task.seed = 12345;
  return task;
}

struct RetrievalRun {
  int64_t seq_len = 256, batch = 8, steps = 400;
  // msa-train's default index warm-up: --dense_attention_fraction 0.02 of 400 steps.
  int64_t dense_attention_steps = 8;
};

// Trains `model` (initialized by the caller) with AdamW, lr 5e-3 cosine to 5e-4.
inline void train_retrieval(Transformer& model, const RetrievalRun& run) {
  AdamW optimizer(model.params(), OptimizerConfig{});
  auto data = make_synthetic_source("kv-recall", model.config().vocab_size, run.batch, run.seq_len,
                                    4, /*depth=*/0.0, /*seed=*/7, DataLayout{}, false);
  ASSERT_TRUE(data.ok()) << data.status();
  TrainerConfig tc;
  tc.steps = run.steps;
  tc.dense_attention_steps = run.dense_attention_steps;
  tc.lr.max_lr = 5e-3;
  tc.lr.min_lr = 5e-4;
  tc.lr.warmup_steps = 20;
  tc.lr.total_steps = run.steps;
  tc.log_every = 100;
  Trainer trainer(model, optimizer, **data, tc);
  ASSERT_TRUE(trainer.run(1).ok());
}

// A fresh MSA model (seed 1) evaluated on 64 held-out samples at run.seq_len with sparse attention
// and recall every 8th query and at the answer positions, trained with `run`, evaluated again;
// the outcome is printed.
struct RetrievalOutcome {
  RetrievalResult before, after;
};
inline RetrievalOutcome train_and_evaluate_msa(const ModelConfig& config, const RetrievalRun& run) {
  Transformer model(config, DType::kF32, Device::kCPU);
  model.params().initialize(1);
  const SyntheticConfig held_out = held_out_task(run.seq_len);
  RetrievalOutcome o;
  o.before = evaluate_retrieval(model, held_out, 64, 16, MsaMode::kSparse, /*recall_stride=*/8,
                                /*answer_recall=*/true);
  train_retrieval(model, run);
  o.after = evaluate_retrieval(model, held_out, 64, 16, MsaMode::kSparse, /*recall_stride=*/8,
                               /*answer_recall=*/true);
  EXPECT_EQ(o.after.index_recall.size(), 2u);
  EXPECT_EQ(o.after.block_recall.size(), 2u);
  if (o.after.index_recall.size() == 2 && o.after.block_recall.size() == 2)
    std::printf(
        "held-out at %lld tokens (budget k B = %d): answer loss %.3f -> %.3f, accuracy %.1f%% -> "
        "%.1f%%, index recall L0 %.3f -> %.3f, L1 %.3f -> %.3f, block recall L0 %.3f -> %.3f, L1 "
        "%.3f -> %.3f\n",
        static_cast<long long>(run.seq_len), config.msa.topk * config.msa.block_size,
        o.before.answer_loss, o.after.answer_loss, 100 * o.before.accuracy, 100 * o.after.accuracy,
        o.before.index_recall[0], o.after.index_recall[0], o.before.index_recall[1],
        o.after.index_recall[1], o.before.block_recall[0], o.after.block_recall[0],
        o.before.block_recall[1], o.after.block_recall[1]);
  EXPECT_EQ(o.after.answer_index_recall.size(), 2u);
  EXPECT_EQ(o.after.answer_block_recall.size(), 2u);
  // "<what> L0 a -> b, L1 c -> d" for a per-layer metric before and after training.
  auto print_layers = [](const char* what, const std::vector<double>& before,
                         const std::vector<double>& after) {
    if (before.size() == 2 && after.size() == 2)
      std::printf("  %s L0 %.3f -> %.3f, L1 %.3f -> %.3f\n", what, before[0], after[0], before[1],
                  after[1]);
  };
  print_layers("at the answer positions: index recall", o.before.answer_index_recall,
               o.after.answer_index_recall);
  print_layers("at the answer positions: block recall", o.before.answer_block_recall,
               o.after.answer_block_recall);
  // The recall ceiling (the index recall of the attention's own top-k blocks): no selector of k
  // blocks keeps more, on the same rows.
  for (const RetrievalResult* r : {&o.before, &o.after}) {
    EXPECT_EQ(r->index_recall_ceiling.size(), 2u);
    EXPECT_EQ(r->answer_index_recall_ceiling.size(), 2u);
    for (size_t l = 0; l < r->index_recall_ceiling.size() && l < r->index_recall.size(); ++l)
      EXPECT_LE(r->index_recall[l], r->index_recall_ceiling[l] + 1e-12) << "layer " << l;
    for (size_t l = 0;
         l < r->answer_index_recall_ceiling.size() && l < r->answer_index_recall.size(); ++l)
      EXPECT_LE(r->answer_index_recall[l], r->answer_index_recall_ceiling[l] + 1e-12)
          << "layer " << l;
  }
  // The max-pool ceiling (the paper's rule fed perfect token scores) lies between them.
  for (const RetrievalResult* r : {&o.before, &o.after}) {
    EXPECT_EQ(r->max_pool_recall_ceiling.size(), 2u);
    for (size_t l = 0; l < r->max_pool_recall_ceiling.size() && l < r->index_recall_ceiling.size();
         ++l)
      EXPECT_LE(r->max_pool_recall_ceiling[l], r->index_recall_ceiling[l] + 1e-12) << "layer " << l;
  }
  print_layers("recall ceiling", o.before.index_recall_ceiling, o.after.index_recall_ceiling);
  print_layers("max-pool ceiling", o.before.max_pool_recall_ceiling,
               o.after.max_pool_recall_ceiling);
  print_layers("at the answer positions: recall ceiling", o.before.answer_index_recall_ceiling,
               o.after.answer_index_recall_ceiling);
  EXPECT_EQ(o.after.answer_fact_selected.size(), 2u);
  print_layers("fact's block selected at the answer positions:", o.before.answer_fact_selected,
               o.after.answer_fact_selected);
  return o;
}

}  // namespace msa::test
