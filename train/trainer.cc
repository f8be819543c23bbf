#include "train/trainer.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/timer.h"

namespace msa {

Trainer::Trainer(Transformer& model, AdamW& optimizer, BatchSource& data,
                 const TrainerConfig& config)
    : model_(model), optimizer_(optimizer), data_(data), config_(config) {}

StepMetrics Trainer::train_step(int64_t step) {
  Timer timer;
  StepMetrics m;
  m.step = step;
  m.warmup = step <= config_.index_warmup_steps;
  ForwardOptions options;
  options.msa_mode = m.warmup ? MsaMode::kDenseWarmup : MsaMode::kSparse;
  options.for_backward = true;
  const bool measure_recall = config_.recall_every > 0 && step % config_.recall_every == 0;

  model_.params().zero_grads();
  for (int micro = 0; micro < config_.grad_accum; ++micro) {
    Batch b = data_.get(step, micro);
    options.recall_query_stride = measure_recall && micro == 0 ? config_.recall_query_stride : 0;
    ForwardResult r = model_.forward(b.tokens.to(model_.device()), b.targets.to(model_.device()),
                                     options);
    model_.backward(1.0 / config_.grad_accum, /*backbone=*/!m.warmup);
    m.loss += r.total_loss / config_.grad_accum;
    m.lm_loss += r.lm_loss / config_.grad_accum;
    m.index_loss += r.index_loss / config_.grad_accum;
    if (!r.index_recall.empty()) m.index_recall = r.index_recall;
    m.tokens += b.tokens.numel();
  }

  AdamW::Filter filter;
  if (m.warmup) filter = [](const ParamSpec& s) { return s.index_branch; };
  m.grad_norm = optimizer_.grad_norm(filter);
  m.lr = config_.lr.at(step);
  optimizer_.step(step, m.lr, m.grad_norm, filter);
  m.seconds = timer.seconds();
  return m;
}

std::string Trainer::format_metrics(const StepMetrics& m) const {
  std::string s = absl::StrFormat("step %*d/%d | loss %.4f", 5, m.step, config_.steps, m.loss);
  if (model_.config().any_msa())
    s += absl::StrFormat(" (lm %.4f, index %.4f)", m.lm_loss, m.index_loss);
  if (!m.index_recall.empty()) {
    s += " | recall " + absl::StrJoin(m.index_recall, ",", [](std::string* out, double r) {
           absl::StrAppend(out, absl::StrFormat("%.3f", r));
         });
  }
  s += absl::StrFormat(" | grad_norm %.3f | lr %.3g | %.0f tok/s", m.grad_norm, m.lr,
                       m.seconds > 0 ? m.tokens / m.seconds : 0.0);
  if (m.warmup) s += " | index warm-up";
  return s;
}

absl::Status Trainer::run(int64_t first_step,
                          const std::function<bool(const StepMetrics&)>& after_step) {
  for (int64_t step = first_step; step <= config_.steps; ++step) {
    StepMetrics m = train_step(step);
    if (!config_.quiet && (step % config_.log_every == 0 || step == first_step ||
                           step == config_.steps || !m.index_recall.empty())) {
      std::printf("%s\n", format_metrics(m).c_str());
      std::fflush(stdout);
    }
    if (after_step && !after_step(m)) break;
  }
  return absl::OkStatus();
}

}  // namespace msa
