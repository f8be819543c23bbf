// Validation: mean LM loss (and perplexity) over a fixed set of held-out batches.
#pragma once

#include <cstdint>

#include "model/transformer.h"
#include "train/batch_source.h"

namespace msa {

struct EvalResult {
  double loss = 0;        // mean cross entropy per counted target token
  double perplexity = 0;  // exp(loss)
  double index_loss = 0;  // mean over batches of the sum over MSA layers of L_KL
  int64_t tokens = 0;     // counted targets
};

// Runs `n_batches` forward passes (no gradients) on batches 1..n_batches of `source` (a
// validation source: always the same batches, so evaluations are comparable over a run).
// With context parallelism (the model's cp group) each rank reads its shard of the batches and
// the results are combined over cp (collective): every rank returns the whole sequences' values.
EvalResult evaluate(Transformer& model, BatchSource& source, int n_batches, MsaMode mode);

}  // namespace msa
