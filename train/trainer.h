// The training loop: micro-batches with gradient accumulation, the index warm-up phases, AdamW
// with clipping and the LR schedule, periodic logging of step, losses, index and block recall,
// grad norm, lr and tokens/s.
//
// Phases of a run with MSA layers (DESIGN.md section 4, "Recipes"), by 1-based step:
//   1 .. index_warmup_steps                      dense attention, backbone frozen, only W_IQ /
//                                                W_IK train (KL over every causal token)
//   .. + dense_attention_steps                   dense attention, everything trains (L_LM +
//                                                lambda * full-support KL): the paper's warm-up
//   the rest                                     sparse attention, L_LM + lambda * sparse KL
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/transformer.h"
#include "train/batch_source.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace msa {

struct TrainerConfig {
  int64_t steps = 100;  // total optimizer steps (the run ends after this step)
  int grad_accum = 1;   // micro-batches per step
  // First steps: MSA layers attend densely, the backbone is frozen and only the index branch
  // trains (an option for converted dense models: their outputs stay bit-identical).
  int64_t index_warmup_steps = 0;
  // Then: MSA layers still attend densely and everything trains (LM loss through dense attention,
  // index branch on the full-support KL), before sparse training: the selector learns where the
  // attention looks before it decides what the attention may see.
  int64_t dense_attention_steps = 0;
  LrSchedule lr;
  int log_every = 10;
  int recall_every = 0;  // measure index and block recall and the ceiling every N steps (0: never)
  int64_t recall_query_stride = 16;
  // The non-finite guard: a step whose loss or global gradient norm is NaN or infinite is not
  // applied (weights and optimizer moments stay as they were; the step's data is consumed and the
  // step counts). After this many such steps in a row run() stops with an error.
  int max_nonfinite_steps = 3;
  bool quiet = false;  // no log lines (tests)
  // Data parallelism: the group whose ranks each train on their share of the global batch
  // (nullptr: one replica). The loss is the mean over all target tokens of the global batch.
  Communicator* dp = nullptr;
};

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, lm_loss = 0, index_loss = 0;
  std::vector<double> index_recall;          // per MSA layer, on steps where it was measured
  std::vector<double> block_recall;          // per MSA layer, on the same steps
  std::vector<double> index_recall_ceiling;  // per MSA layer, on the same steps
  std::vector<double> max_pool_recall_ceiling;  // per MSA layer, on the same steps
  double grad_norm = 0, lr = 0;
  int64_t tokens = 0;
  double seconds = 0;
  // Tokens per second over the steps since the previous metrics line, this one included (recall
  // measurements and all): set by Trainer::run for the lines it prints; 0 elsewhere.
  double interval_tokens_per_second = 0;
  bool warmup = false;           // index warm-up with the backbone frozen
  bool dense_attention = false;  // MSA layers attended densely (either warm-up phase)
  bool skipped = false;          // the loss or the gradient norm was not finite: not applied
  bool diverged = false;  // skipped, the max_nonfinite_steps-th in a row: run() stops after it
  int64_t nonfinite_in_a_row = 0;  // skipped steps in a row ending at this one (set by run)
  // Skipped steps so far, this one included, and those of them in the frozen-backbone warm-up
  // (Adam's update counts; saved in checkpoints).
  int64_t skipped_steps = 0;
  int64_t skipped_warmup_steps = 0;
};

// How MSA layers run at 1-based `step` (dense in both warm-up phases, then sparse).
MsaMode msa_mode_at(const TrainerConfig& config, int64_t step);
// The last step of the two warm-up phases (dense attention), saturated at INT64_MAX.
int64_t last_dense_attention_step(const TrainerConfig& config);

class Trainer {
 public:
  Trainer(Transformer& model, AdamW& optimizer, BatchSource& data, const TrainerConfig& config);

  // Runs one optimizer step (1-based `step`) and returns its metrics.
  StepMetrics train_step(int64_t step);

  // Runs steps first_step..config.steps; calls `after_step` after each (checkpoints, eval; it may
  // return false to stop early). Logs every log_every steps. Fails (FailedPrecondition, after
  // logging that step and calling after_step with it, StepMetrics::diverged) once
  // max_nonfinite_steps steps in a row were skipped, counting the nonfinite_before skipped just
  // before first_step (a resumed run's checkpoint's).
  absl::Status run(int64_t first_step,
                   const std::function<bool(const StepMetrics&)>& after_step = nullptr,
                   int64_t nonfinite_before = 0);

  std::string format_metrics(const StepMetrics& m) const;

  // The skipped steps before the first step run (a resumed run's checkpoint's
  // TrainState::skipped_steps and skipped_warmup_steps).
  void set_skipped_before(int64_t skipped, int64_t skipped_warmup) {
    skipped_ = skipped;
    skipped_warmup_ = skipped_warmup;
  }

 private:
  Transformer& model_;
  AdamW& optimizer_;
  BatchSource& data_;
  TrainerConfig config_;
  bool recall_stride_noted_ = false;  // the raised recall stride was reported
  int64_t skipped_ = 0, skipped_warmup_ = 0;  // skipped steps so far (of them in the warm-up)
  // MSA_TEST_NONFINITE_STEP (tests only), read once: the step the guard skips as if not finite.
  std::optional<int64_t> forced_nonfinite_step_;
};

}  // namespace msa
