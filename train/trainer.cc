#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/env_switch.h"
#include "core/timer.h"
#include "kernels/msa.h"

namespace msa {

int64_t last_dense_attention_step(const TrainerConfig& config) {
  int64_t last;
  // The sum of two huge counts overflowed (and attended sparsely).
  if (__builtin_add_overflow(config.index_warmup_steps, config.dense_attention_steps, &last))
    return std::numeric_limits<int64_t>::max();
  return last;
}

MsaMode msa_mode_at(const TrainerConfig& config, int64_t step) {
  return step <= last_dense_attention_step(config) ? MsaMode::kDenseWarmup : MsaMode::kSparse;
}

Trainer::Trainer(Transformer& model, AdamW& optimizer, BatchSource& data,
                 const TrainerConfig& config)
    : model_(model),
      optimizer_(optimizer),
      data_(data),
      config_(config),
      forced_nonfinite_step_(env_int("MSA_TEST_NONFINITE_STEP")) {}

StepMetrics Trainer::train_step(int64_t step) {
  Timer timer;
  StepMetrics m;
  m.step = step;
  m.warmup = step <= config_.index_warmup_steps;
  ForwardOptions options;
  options.msa_mode = msa_mode_at(config_, step);
  m.dense_attention = options.msa_mode == MsaMode::kDenseWarmup;
  options.for_backward = true;
  const bool measure_recall = config_.recall_every > 0 && step % config_.recall_every == 0;

  // The step's loss is the mean over every target token of the global batch (all micro-batches
  // of all data-parallel ranks), and each layer's index loss the mean over its rows, i.e. over
  // its sequences (every sequence has T * G rows): each micro-batch's gradient is scaled by its
  // share, so summing over ranks gives the global mean.
  std::vector<Batch> batches;
  int64_t local_targets = 0, local_sequences = 0;
  for (int micro = 0; micro < config_.grad_accum; ++micro) {
    batches.push_back(data_.get(step, micro));
    const Batch& b = batches.back();
    const int32_t* y = b.targets.data<int32_t>();
    for (int64_t i = 0; i < b.targets.numel(); ++i) local_targets += y[i] != kIgnoreIndex;
    local_sequences += b.tokens.size(0);
  }
  Communicator* dp = config_.dp;
  const int64_t global_targets = dp ? dp->all_reduce_sum(local_targets) : local_targets;
  const int64_t global_sequences = dp ? dp->all_reduce_sum(local_sequences) : local_sequences;

  model_.params().zero_grads();
  double lm_sum = 0, index_sum = 0, recall_rows = 0;
  for (int micro = 0; micro < config_.grad_accum; ++micro) {
    const Batch& b = batches[micro];
    int64_t stride = 0;
    if (measure_recall && micro == 0) {
      // Context parallelism: a rank's T / cp queries see up to all T keys (the last shard's).
      const int64_t local_T = b.tokens.size(1), T = local_T * model_.context_parallel().size;
      stride = bounded_recall_stride(local_T, config_.recall_query_stride, model_.device(), T);
      if (stride != config_.recall_query_stride && !recall_stride_noted_ && !config_.quiet) {
        std::fprintf(
            stderr,
            "msa-train: recall samples one query in every %lld of the %lld-token sequences "
            "(--recall_stride=%lld, raised to bound its cost: T^2 / stride per "
            "sequence and layer)\n",
            static_cast<long long>(stride), static_cast<long long>(T),
            static_cast<long long>(config_.recall_query_stride));
        recall_stride_noted_ = true;
      }
    }
    options.recall_query_stride = stride;
    options.documents = batch_documents(b);
    ForwardResult r =
        model_.forward(b.tokens.to(model_.device()), b.targets.to(model_.device()), options);
    const double lm_share =
        global_targets > 0 ? static_cast<double>(r.n_targets) / global_targets : 0.0;
    const double index_share = static_cast<double>(b.tokens.size(0)) / global_sequences;
    // The last micro-batch's backward completes the gradients: its buckets start reducing over
    // the data-parallel group as soon as their layers are done.
    GradsReadyFn ready;
    if (micro == config_.grad_accum - 1) {
      optimizer_.begin_reduction();
      ready = [this](const std::vector<Parameter*>& ps) { optimizer_.grads_ready(ps); };
    }
    model_.backward(lm_share, index_share, /*backbone=*/!m.warmup, ready);
    lm_sum += r.lm_loss * lm_share;
    index_sum += r.index_loss * index_share;
    if (!r.index_recall.empty()) m.index_recall = r.index_recall;
    if (!r.block_recall.empty()) m.block_recall = r.block_recall;
    if (!r.index_recall_ceiling.empty()) m.index_recall_ceiling = r.index_recall_ceiling;
    if (!r.max_pool_recall_ceiling.empty()) m.max_pool_recall_ceiling = r.max_pool_recall_ceiling;
    if (!r.index_recall.empty()) recall_rows = r.recall_rows;
    m.tokens += b.tokens.numel();
  }
  if (dp) {
    lm_sum = dp->all_reduce_sum(lm_sum);
    index_sum = dp->all_reduce_sum(index_sum);
    m.tokens = dp->all_reduce_sum(m.tokens);
    // The recalls of the global batch's first micro-batches, each rank's weighed by its sampled
    // rows (only rank 0's own were logged before). Every rank measured at this step, the same
    // layers. One all-reduce: the rows, then every recall times them.
    if (measure_recall && !m.index_recall.empty()) {
      const std::vector<double*> recalls = [&] {
        std::vector<double*> out;
        for (std::vector<double>* v : {&m.index_recall, &m.block_recall, &m.index_recall_ceiling,
                                       &m.max_pool_recall_ceiling})
          for (double& x : *v) out.push_back(&x);
        return out;
      }();
      Tensor sums = Tensor::zeros({static_cast<int64_t>(recalls.size()) + 1}, DType::kF64);
      double* s = sums.data<double>();
      s[0] = recall_rows;
      for (size_t i = 0; i < recalls.size(); ++i) s[i + 1] = *recalls[i] * recall_rows;
      dp->all_reduce_sum(sums);
      for (size_t i = 0; i < recalls.size(); ++i) *recalls[i] = s[0] > 0 ? s[i + 1] / s[0] : 1.0;
    }
  }
  m.lm_loss = lm_sum;
  m.index_loss = index_sum;
  m.loss = lm_sum + model_.config().msa.index_loss_weight * index_sum;
  optimizer_.reduce_gradients();

  AdamW::Filter filter;
  if (m.warmup) filter = [](const ParamSpec& s) { return s.index_branch; };
  m.grad_norm = optimizer_.grad_norm(filter);
  m.lr = config_.lr.at(step);
  // The non-finite guard. The loss is reduced over the data-parallel group and the norm over every
  // group, so all ranks take the same decision.
  m.skipped = !std::isfinite(m.loss) || !std::isfinite(m.grad_norm);
  // A test's stand-in for a non-finite step (the guard's decision, nothing else).
  if (forced_nonfinite_step_ == step) m.skipped = true;
  // Adam's bias correction counts the updates a parameter received (PyTorch's GradScaler and
  // Megatron-LM do not count a skipped step either; counting them made the next updates up to
  // ~0.5x too small). After the frozen-backbone warm-up the backbone's moments start from zero at
  // step W + 1: its count starts there (the run's step gave its first updates ~0.4x the lr).
  AdamW::StepOf bias_step;
  if (config_.index_warmup_steps > 0 || skipped_ > 0) {
    const int64_t index_updates = step - skipped_;
    // (At least 1: a run resumed with another --index_warmup_steps after a skip counted its
    // warm-up skips under the old length; the count would reach 0 and abort in adamw_update.)
    const int64_t backbone_updates =
        std::max<int64_t>(1, step - config_.index_warmup_steps - (skipped_ - skipped_warmup_));
    const bool warmup = m.warmup;  // (the backbone is not updated then)
    bias_step = [index_updates, backbone_updates, warmup](const ParamSpec& s) {
      return s.index_branch || warmup ? index_updates : backbone_updates;
    };
  }
  if (!m.skipped) {
    optimizer_.step(step, m.lr, m.grad_norm, filter, bias_step);
  } else {
    ++skipped_;
    if (m.warmup) ++skipped_warmup_;
  }
  m.skipped_steps = skipped_;
  m.skipped_warmup_steps = skipped_warmup_;
  m.seconds = timer.seconds();
  return m;
}

std::string Trainer::format_metrics(const StepMetrics& m) const {
  std::string s = absl::StrFormat("step %*d/%d | loss %.4f", 5, m.step, config_.steps, m.loss);
  if (model_.config().any_msa())
    s += absl::StrFormat(" (lm %.4f, index %.4f)", m.lm_loss, m.index_loss);
  auto per_layer = [](const std::vector<double>& v) {
    return absl::StrJoin(v, ",", [](std::string* out, double r) {
      absl::StrAppend(out, absl::StrFormat("%.3f", r));
    });
  };
  // Index recall (attention mass kept, the headline), the paper's block recall, the most index
  // recall any k blocks keep and what the paper's max-pooling rule keeps with perfect token
  // scores, per layer.
  if (!m.index_recall.empty()) s += " | recall " + per_layer(m.index_recall);
  if (!m.block_recall.empty()) s += " | block recall " + per_layer(m.block_recall);
  if (!m.index_recall_ceiling.empty())
    s += " | recall ceiling " + per_layer(m.index_recall_ceiling);
  if (!m.max_pool_recall_ceiling.empty())
    s += " | max-pool ceiling " + per_layer(m.max_pool_recall_ceiling);
  // The interval's rate when run() measured one, else this step's.
  double tokens_per_second = m.interval_tokens_per_second;
  if (tokens_per_second <= 0 && m.seconds > 0) tokens_per_second = m.tokens / m.seconds;
  s += absl::StrFormat(" | grad_norm %.3f | lr %.3g | %.0f tok/s", m.grad_norm, m.lr,
                       tokens_per_second);
  if (m.skipped) s += " | NOT FINITE: step skipped";
  if (m.warmup)
    s += " | index warm-up (dense attention, backbone frozen)";
  else if (m.dense_attention && model_.config().any_msa())
    s += " | index warm-up (dense attention)";
  return s;
}

absl::Status Trainer::run(int64_t first_step,
                          const std::function<bool(const StepMetrics&)>& after_step,
                          int64_t nonfinite_before) {
  int64_t nonfinite_in_a_row = nonfinite_before;
  // Since the previous metrics line: a logged step's own rate would hide the steps between lines
  // or, on a recall step, show the recall measurement's cost as the training speed.
  int64_t interval_tokens = 0;
  double interval_seconds = 0;
  for (int64_t step = first_step; step <= config_.steps; ++step) {
    StepMetrics m = train_step(step);
    interval_tokens += m.tokens;
    interval_seconds += m.seconds;
    nonfinite_in_a_row = m.skipped ? nonfinite_in_a_row + 1 : 0;
    m.nonfinite_in_a_row = nonfinite_in_a_row;
    if (m.skipped && !config_.quiet) {
      std::fprintf(stderr,
                   "msa-train: step %lld: loss %g, gradient norm %g: not finite; the step was not "
                   "applied (weights and optimizer state unchanged), %lld of %d in a row\n",
                   static_cast<long long>(step), m.loss, m.grad_norm,
                   static_cast<long long>(nonfinite_in_a_row), config_.max_nonfinite_steps);
      std::fflush(stderr);
    }
    // The last step of a diverging run is logged and handed to after_step like the others (its
    // metrics line was missing); run() then returns the error.
    const bool diverged = m.skipped && nonfinite_in_a_row >= config_.max_nonfinite_steps;
    m.diverged = diverged;
    if (!config_.quiet && (step % config_.log_every == 0 || step == first_step ||
                           step == config_.steps || !m.index_recall.empty() || diverged)) {
      if (interval_seconds > 0) m.interval_tokens_per_second = interval_tokens / interval_seconds;
      interval_tokens = 0;
      interval_seconds = 0;
      std::printf("%s\n", format_metrics(m).c_str());
      std::fflush(stdout);
    }
    const bool go_on = !after_step || after_step(m);
    if (diverged)
      return absl::FailedPreconditionError(absl::StrFormat(
          "training diverged: the loss or the gradient norm was not finite for %d steps in a row "
          "(steps %d..%d; at step %d loss %g, gradient norm %g), --max_nonfinite_steps=%d. None "
          "of them was applied (the weights and optimizer state are those after step %d) and no "
          "checkpoint holds non-finite values; resume from the last checkpoint with a lower --lr "
          "(or a smaller --grad_clip)",
          nonfinite_in_a_row, step - nonfinite_in_a_row + 1, step, step, m.loss, m.grad_norm,
          config_.max_nonfinite_steps, step - nonfinite_in_a_row));
    if (!go_on) break;
  }
  return absl::OkStatus();
}

}  // namespace msa
