// The tiny retrieval setup shared by the learning tests: a 2-layer model (block size 16, top-4)
// trained on synthetic kv-recall with the facts at the start, evaluated on held-out samples.
#pragma once

#include "gtest/gtest.h"
#include "model/transformer.h"
#include "train/batch_source.h"
#include "train/optimizer.h"
#include "train/retrieval_eval.h"
#include "train/trainer.h"

namespace msa::test {

inline ModelConfig tiny_retrieval_model(AttentionKind kind) {
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
  int64_t seq_len = 256, batch = 16, steps = 400, dense_attention_steps = 0;
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

}  // namespace msa::test
