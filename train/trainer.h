// The training loop: micro-batches with gradient accumulation, the index warm-up phase, AdamW
// with clipping and the LR schedule, periodic logging of step, losses, index recall, grad norm,
// lr and tokens/s.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/transformer.h"
#include "train/batch_source.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace msa {

struct TrainerConfig {
  int64_t steps = 100;             // total optimizer steps (the run ends after this step)
  int grad_accum = 1;              // micro-batches per step
  int64_t index_warmup_steps = 0;  // first steps: MSA layers dense, only the index branch trains
  // Then: MSA layers still attend densely but everything trains (LM loss through dense attention,
  // index branch on the dense-target loss), before sparse training. Lets a model trained from
  // scratch learn where to look before the selector decides what it may see.
  int64_t dense_attention_steps = 0;
  LrSchedule lr;
  int log_every = 10;
  int recall_every = 0;  // measure index recall every N steps (0: never)
  int64_t recall_query_stride = 16;
  bool quiet = false;  // no log lines (tests)
  // Data parallelism: the group whose ranks each train on their share of the global batch
  // (nullptr: one replica). The loss is the mean over all target tokens of the global batch.
  Communicator* dp = nullptr;
};

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, lm_loss = 0, index_loss = 0;
  std::vector<double> index_recall;  // per MSA layer, on steps where it was measured
  double grad_norm = 0, lr = 0;
  int64_t tokens = 0;
  double seconds = 0;
  bool warmup = false;
};

class Trainer {
 public:
  Trainer(Transformer& model, AdamW& optimizer, BatchSource& data, const TrainerConfig& config);

  // Runs one optimizer step (1-based `step`) and returns its metrics.
  StepMetrics train_step(int64_t step);

  // Runs steps first_step..config.steps; calls `after_step` after each (checkpoints, eval; it may
  // return false to stop early). Logs every log_every steps.
  absl::Status run(int64_t first_step,
                   const std::function<bool(const StepMetrics&)>& after_step = nullptr);

  std::string format_metrics(const StepMetrics& m) const;

 private:
  Transformer& model_;
  AdamW& optimizer_;
  BatchSource& data_;
  TrainerConfig config_;
};

}  // namespace msa
