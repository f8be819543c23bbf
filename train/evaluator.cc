#include "train/evaluator.h"

#include <cmath>

namespace msa {

EvalResult evaluate(Transformer& model, BatchSource& source, int n_batches, MsaMode mode) {
  EvalResult r;
  double weighted = 0;
  ForwardOptions options;
  options.msa_mode = mode;
  options.for_backward = false;
  for (int i = 0; i < n_batches; ++i) {
    Batch b = source.get(i + 1, 0);
    options.documents = batch_documents(b);
    ForwardResult f = model.forward(b.tokens.to(model.device()), b.targets.to(model.device()), options);
    weighted += f.lm_loss * f.n_targets;
    r.tokens += f.n_targets;
    r.index_loss += f.index_loss / n_batches;
  }
  const ContextParallel& cp = model.context_parallel();
  if (cp.enabled()) {
    // The shards' target-weighted losses and counts add up; each shard's index loss is the mean
    // over as many rows as any other's.
    weighted = cp.comm->all_reduce_sum(weighted);
    r.tokens = cp.comm->all_reduce_sum(r.tokens);
    r.index_loss = cp.comm->all_reduce_sum(r.index_loss) / cp.size;
  }
  r.loss = r.tokens > 0 ? weighted / r.tokens : 0.0;
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace msa
