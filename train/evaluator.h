// Validation: mean LM loss (and perplexity) over a fixed set of held-out batches.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/transformer.h"
#include "train/batch_source.h"

namespace msa {

struct EvalResult {
  double loss = 0;        // mean cross entropy per counted target token
  double perplexity = 0;  // exp(loss)
  double index_loss = 0;  // mean over batches of the sum over MSA layers of L_KL
  int64_t tokens = 0;     // counted targets
  // With answer_recall, per MSA layer: the index recall, block recall and index recall ceiling
  // (kernels/msa.h) at the positions whose targets are counted, a mean over all of them (empty
  // when not measured).
  std::vector<double> answer_index_recall;
  std::vector<double> answer_block_recall;
  std::vector<double> answer_index_recall_ceiling;
  bool stopped = false;  // ended early by evaluate()'s `stop`: the values cover fewer batches
};

// Runs `n_batches` forward passes (no gradients) on batches 1..n_batches of `source` (a
// validation source: always the same batches, so evaluations are comparable over a run).
// With context parallelism (the model's cp group) each rank reads its shard of the batches and
// the results are combined over cp (collective): every rank returns the whole sequences' values.
// answer_recall: also measure each MSA layer's recalls at the counted targets' positions. On the
// synthetic retrieval tasks those are exactly the answer positions (every other target is
// ignored); on text every position counts, so leave it off there.
// replicas (optional, collective): the ranks that each read their own share of the batches (data
// parallelism: a source for dp rank r of D reads its rows of the global batch; with context
// parallelism the dp x cp group, the cp shards' sums adding up the same way); the loss, token
// count, index loss and answer recalls are combined over it, so D ranks return what one rank with
// D times the batch would. Without it only the model's cp group is combined.
// stop (optional, collective: every rank calls it between the same batches and gets the same
// answer): polled before each batch; when it says so, the evaluation ends early with `stopped` set
// (a SIGTERM must not wait for a long evaluation).
EvalResult evaluate(Transformer& model, BatchSource& source, int n_batches, MsaMode mode,
                    bool answer_recall = false, Communicator* replicas = nullptr,
                    const std::function<bool()>& stop = nullptr);

}  // namespace msa
