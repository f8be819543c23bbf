#include "train/evaluator.h"

#include <cmath>

#include "train/per_layer_sums.h"

namespace msa {

EvalResult evaluate(Transformer& model, BatchSource& source, int n_batches, MsaMode mode,
                    bool answer_recall, Communicator* replicas, const std::function<bool()>& stop) {
  // Answer recall is measured per rank on its own rows; with context parallelism a shard may hold
  // no answers, and combining the shards' means is not done yet: not measured there.
  answer_recall = answer_recall && !model.context_parallel().enabled();
  EvalResult r;
  double weighted = 0;
  int64_t answers = 0;
  ForwardOptions options;
  options.msa_mode = mode;
  options.for_backward = false;
  for (int i = 0; i < n_batches; ++i) {
    if (stop && stop()) {
      r.stopped = true;
      break;
    }
    Batch b = source.get(i + 1, 0);
    options.documents = batch_documents(b);
    options.answer_positions.clear();
    if (answer_recall) {
      const int64_t T = b.targets.size(1);
      const int32_t* y = b.targets.data<int32_t>();  // on the CPU (train/batch_source.h)
      for (int64_t row = 0; row < b.targets.numel(); ++row)
        if (y[row] != kIgnoreIndex) options.answer_positions.push_back({row / T, row % T});
    }
    ForwardResult f =
        model.forward(b.tokens.to(model.device()), b.targets.to(model.device()), options);
    // Weighted by the batch's answers: a mean over every answer (and head or group).
    if (!f.answer_index_recall.empty()) {
      const double w = static_cast<double>(options.answer_positions.size());
      add_per_layer(f.answer_index_recall, w, r.answer_index_recall);
      add_per_layer(f.answer_block_recall, w, r.answer_block_recall);
      add_per_layer(f.answer_index_recall_ceiling, w, r.answer_index_recall_ceiling);
      answers += static_cast<int64_t>(options.answer_positions.size());
    }
    weighted += f.lm_loss * f.n_targets;
    r.tokens += f.n_targets;
    r.index_loss += f.index_loss / n_batches;
  }
  const ContextParallel& cp = model.context_parallel();
  Communicator* group = replicas != nullptr && replicas->size() > 1 ? replicas
                        : cp.enabled()                              ? cp.comm
                                                                    : nullptr;
  if (group != nullptr) {
    // The shards' and replicas' target-weighted losses and counts add up; each rank's index loss
    // is the mean over as many rows as any other's.
    weighted = group->all_reduce_sum(weighted);
    r.tokens = group->all_reduce_sum(r.tokens);
    r.index_loss = group->all_reduce_sum(r.index_loss) / group->size();
    if (answer_recall) {
      // Answer-weighted sums, one per MSA layer on every rank (a rank whose batches held no
      // answer has none: zeros, so that every rank makes the same collectives).
      int64_t msa_layers = 0;
      for (int l = 0; l < model.config().n_layers; ++l)
        msa_layers += model.config().layer_kind(l) == AttentionKind::kMsa ? 1 : 0;
      for (std::vector<double>* v :
           {&r.answer_index_recall, &r.answer_block_recall, &r.answer_index_recall_ceiling}) {
        v->resize(static_cast<size_t>(msa_layers), 0.0);
        for (double& x : *v) x = group->all_reduce_sum(x);
      }
      answers = group->all_reduce_sum(answers);
    }
  }
  r.loss = r.tokens > 0 ? weighted / r.tokens : 0.0;
  r.perplexity = std::exp(r.loss);
  if (answers == 0) {
    r.answer_index_recall.clear();
    r.answer_block_recall.clear();
    r.answer_index_recall_ceiling.clear();
  }
  for (double& x : r.answer_index_recall) x /= static_cast<double>(answers);
  for (double& x : r.answer_block_recall) x /= static_cast<double>(answers);
  for (double& x : r.answer_index_recall_ceiling) x /= static_cast<double>(answers);
  return r;
}

}  // namespace msa
