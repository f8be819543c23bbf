// Training harness shared by the multi-rank tests: a tiny model trained on synthetic kv-recall
// on a data x context x tensor-parallel layout (or on one rank), and a per-tensor relative
// difference.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "gtest/gtest.h"
#include "model/tensor_parallel.h"
#include "model/transformer.h"
#include "train/batch_source.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace msa::test {

struct RunResult {
  std::vector<double> losses;
  std::map<std::string, Tensor> params;          // full tensors, after training
  std::map<std::string, Tensor> initial_params;  // full tensors, before the first step
};

// Packed documents (--pack_documents) for the harness: every row of `inner`'s batches gets the
// same document starts (positions in the whole sequence), so a batch's documents do not depend on
// how it is split over ranks.
class FixedDocumentsSource : public BatchSource {
 public:
  FixedDocumentsSource(std::unique_ptr<BatchSource> inner, std::vector<int64_t> starts)
      : inner_(std::move(inner)), starts_(std::move(starts)) {}
  Batch get(int64_t step, int micro) override {
    Batch b = inner_->get(step, micro);
    b.doc_starts.assign(b.tokens.size(0), starts_);
    return b;
  }
  std::string describe() const override { return inner_->describe() + ", documents packed"; }

 private:
  std::unique_ptr<BatchSource> inner_;
  std::vector<int64_t> starts_;
};

// A tiny model, its AdamW and its kv-recall data (seq_len tokens, 3 facts) on a data x context x
// tensor-parallel layout as msa-train builds it: `batch` sequences per data-parallel rank, each
// cp rank its shard of them, gradients summed over dp x cp; groups == nullptr: this rank alone.
// doc_starts non-empty: every row packs documents starting there (FixedDocumentsSource);
// cp_zigzag: the zig-zag cp layout (model/context_parallel.h).
// On Device::kCUDA the model computes in bf16 (f32 masters), as msa-train does.
struct ParallelSetup {
  ParallelSetup(const ModelConfig& c, const ProcessGroups* groups, bool zero1, int64_t batch,
                int steps, int grad_accum, int64_t index_warmup, int64_t dense_steps, Device device,
                double max_lr, int64_t seq_len = 48, const std::vector<int64_t>& doc_starts = {},
                bool cp_zigzag = false)
      : tp(tensor_parallel_of(groups ? groups->tp.get() : nullptr)),
        dp(groups ? groups->gradient_group() : nullptr),
        model(c, device == Device::kCUDA ? DType::kBF16 : DType::kF32, device, tp,
              context_parallel_of(groups && groups->cp_size > 1 ? groups->cp.get() : nullptr,
                                  cp_zigzag)) {
    model.params().initialize(3, tp.rank, tp.size);
    optimizer = std::make_unique<AdamW>(model.params(), optimizer_config(zero1));
    DataLayout layout{grad_accum, groups ? groups->dp_rank : 0, groups ? groups->dp_size : 1};
    auto made =
        make_synthetic_source("kv-recall", c.vocab_size, batch, seq_len, 3, -1, 11, layout, false);
    EXPECT_TRUE(made.ok());
    std::unique_ptr<BatchSource> source = std::move(*made);
    if (!doc_starts.empty())
      source = std::make_unique<FixedDocumentsSource>(std::move(source), doc_starts);
    data = make_context_shard_source(std::move(source), groups ? groups->cp_rank : 0,
                                     groups ? groups->cp_size : 1, cp_zigzag);
    config.steps = steps;
    config.grad_accum = grad_accum;
    config.lr.max_lr = max_lr;
    config.lr.min_lr = max_lr / 10;
    config.lr.warmup_steps = 3;
    config.lr.total_steps = steps;
    config.quiet = true;
    config.dp = dp;
    config.index_warmup_steps = index_warmup;
    config.dense_attention_steps = dense_steps;
  }
  OptimizerConfig optimizer_config(bool zero1) const {
    OptimizerConfig oc;
    oc.dp = dp;
    oc.tp = tp.enabled() ? tp.comm : nullptr;
    oc.zero1 = zero1;
    oc.bucket_bytes = 4096;  // several buckets even for a tiny model
    return oc;
  }
  // This rank's parts of parameter-shaped tensors (by parameter name) as full CPU tensors
  // (collective over tp).
  std::map<std::string, Tensor> full(std::map<std::string, Tensor> parts) const {
    for (auto& [name, t] : parts)
      t = tp.enabled() ? tp_gather(t, model.params().at(name).spec.tp_split, tp.comm)
                       : t.to(Device::kCPU);
    return parts;
  }

  TensorParallel tp;
  Communicator* dp;  // the gradient group: dp x cp
  Transformer model;
  std::unique_ptr<AdamW> optimizer;  // made after the model is initialized (it copies masters)
  std::unique_ptr<BatchSource> data;
  TrainerConfig config;
};

// The tiny model of the GPU layout tests (kv-recall ids < 96; head dim 16, B 8, top-3): dense, or
// MSA in both layers.
inline ModelConfig tiny_gpu_model(bool msa_layers) {
  ModelConfig c;
  c.vocab_size = 96;  // the synthetic tasks use ids up to 96
  c.d_model = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.ffn_dim = 128;
  if (msa_layers) c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
  c.msa.block_size = 8;
  c.msa.topk = 3;
  c.msa.index_dim = 8;
  return c;
}

// Trains `steps` steps with `batch` sequences per data-parallel rank (ParallelSetup).
inline RunResult train(const ModelConfig& c, const ProcessGroups* groups, bool zero1, int64_t batch,
                       int steps, int grad_accum = 1, int64_t index_warmup = 0,
                       int64_t dense_steps = 0, Device device = Device::kCPU,
                       double max_lr = 3e-3) {
  ParallelSetup setup(c, groups, zero1, batch, steps, grad_accum, index_warmup, dense_steps, device,
                      max_lr);
  Trainer trainer(setup.model, *setup.optimizer, *setup.data, setup.config);
  RunResult r;
  r.initial_params = setup.full(setup.optimizer->master_weights());
  EXPECT_TRUE(trainer
                  .run(1,
                       [&](const StepMetrics& m) {
                         r.losses.push_back(m.loss);
                         return true;
                       })
                  .ok());
  r.params = setup.full(setup.optimizer->master_weights());
  return r;
}

// The phase of a training step for the MSA layers (train/trainer.h).
enum class Phase { kSparse, kDenseAttention, kFrozenBackboneWarmup };

inline const char* phase_name(Phase p) {
  switch (p) {
    case Phase::kSparse:
      return "sparse";
    case Phase::kDenseAttention:
      return "index warm-up, dense attention";
    case Phase::kFrozenBackboneWarmup:
      return "index warm-up, backbone frozen";
  }
  return "?";
}

// The gradients of one training step (step 1, in `phase`, lr 1e-3) with `batch` sequences per
// data-parallel rank, as full CPU tensors after the data-parallel reduction (the trainer's loss
// scaling included), and the step's metrics (ParallelSetup). Split parameters are gathered over
// tp; a replicated one is this rank's own copy, so that each tp rank's is checked. With zero1
// the reduced gradients live in the optimizer's shards: grads is left empty and only
// metrics.grad_norm (the norm the clipping uses) tells. doc_starts non-empty: every row holds
// documents starting there (FixedDocumentsSource).
struct StepGradients {
  std::map<std::string, Tensor> grads;  // full tensors
  StepMetrics metrics;
};
inline StepGradients step_gradients(const ModelConfig& c, const ProcessGroups* groups,
                                    int64_t batch, Phase phase, int grad_accum, Device device,
                                    bool zero1, int64_t seq_len,
                                    const std::vector<int64_t>& doc_starts,
                                    bool cp_zigzag = false) {
  ParallelSetup setup(
      c, groups, zero1, batch, 1, grad_accum, phase == Phase::kFrozenBackboneWarmup ? 1 : 0,
      phase == Phase::kDenseAttention ? 1 : 0, device, 1e-3, seq_len, doc_starts, cp_zigzag);
  Trainer trainer(setup.model, *setup.optimizer, *setup.data, setup.config);
  StepGradients r;
  r.metrics = trainer.train_step(1);
  if (zero1) return r;
  std::map<std::string, Tensor> grads;
  for (Parameter& p : setup.model.params().all()) grads[p.spec.name] = p.grad.clone();
  r.grads = setup.full(std::move(grads));
  return r;
}
inline StepGradients step_gradients(const ModelConfig& c, const ProcessGroups* groups,
                                    int64_t batch, Phase phase, int grad_accum = 1,
                                    Device device = Device::kCPU, bool zero1 = false,
                                    int64_t seq_len = 48) {
  return step_gradients(c, groups, batch, phase, grad_accum, device, zero1, seq_len, {});
}
inline StepGradients step_gradients(const ModelConfig& c, const ProcessGroups* groups,
                                    int64_t batch, Phase phase, int grad_accum, Device device,
                                    bool zero1, const std::vector<int64_t>& doc_starts) {
  return step_gradients(c, groups, batch, phase, grad_accum, device, zero1, 48, doc_starts);
}

// |a - b| / |b|; +infinity when either is not finite (a NaN would pass EXPECT_LT otherwise).
inline double rel_diff(double a, double b) {
  if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::infinity();
  return std::abs(a - b) / std::max(std::abs(b), 1e-300);
}

// Largest over tensors of ||a - b|| / ||b|| (L2): the relative difference of each tensor;
// +infinity (naming that tensor) when either holds a NaN or an infinity. (Element-wise ratios
// are ill-posed for Adam's first steps, whose update is lr * g / |g| and so flips with the last
// bit of a near-zero gradient's reduction order.)
inline double max_rel_diff(const std::map<std::string, Tensor>& a,
                           const std::map<std::string, Tensor>& b,
                           std::string* worst_name = nullptr) {
  double worst = 0;
  EXPECT_EQ(a.size(), b.size());
  // Nothing compared proves nothing (a bit-exact check of two empty maps passed).
  if (a.empty() || a.size() != b.size()) return std::numeric_limits<double>::infinity();
  for (const auto& [name, t] : a) {
    EXPECT_TRUE(b.count(name)) << name;
    if (!b.count(name)) return std::numeric_limits<double>::infinity();
    const auto x = t.to_double_vector(), y = b.at(name).to_double_vector();
    EXPECT_EQ(x.size(), y.size()) << name;
    if (x.size() != y.size()) return std::numeric_limits<double>::infinity();
    double diff = 0, norm = 0;
    for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
      diff += (x[i] - y[i]) * (x[i] - y[i]);
      norm += y[i] * y[i];
    }
    // std::max and > both drop a NaN: test it (a NaN anywhere makes diff NaN, an inf makes it
    // inf or NaN).
    const double rel = std::isfinite(diff) && std::isfinite(norm)
                           ? std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12)
                           : std::numeric_limits<double>::infinity();
    if (rel > worst && worst_name != nullptr) *worst_name = name;
    worst = std::max(worst, rel);
  }
  return worst;
}

// The largest relative L2 difference, over tensors, between two runs' updates (final minus
// initial weights): |(a - init) - (b - init)| / |b - init|. Unlike max_rel_diff of the weights,
// a run that barely moved its weights cannot pass by being close to the initialization: a run
// that changed nothing scores 1. NaN or inf scores inf.
inline double max_rel_update_diff(const std::map<std::string, Tensor>& a,
                                  const std::map<std::string, Tensor>& b,
                                  const std::map<std::string, Tensor>& init,
                                  std::string* worst_name = nullptr) {
  double worst = 0;
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [name, t] : b) {
    EXPECT_TRUE(a.count(name) && init.count(name)) << name;
    if (!a.count(name) || !init.count(name)) continue;
    const auto x = a.at(name).to_double_vector(), y = t.to_double_vector();
    const auto x0 = init.at(name).to_double_vector();
    EXPECT_EQ(x.size(), y.size()) << name;
    EXPECT_EQ(x0.size(), y.size()) << name;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < std::min({x.size(), y.size(), x0.size()}); ++i) {
      diff += (x[i] - y[i]) * (x[i] - y[i]);
      norm += (y[i] - x0[i]) * (y[i] - x0[i]);
    }
    const double rel = std::isfinite(diff) && std::isfinite(norm)
                           ? std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30)
                           : std::numeric_limits<double>::infinity();
    if (rel > worst && worst_name != nullptr) *worst_name = name;
    worst = std::max(worst, rel);
  }
  return worst;
}

// sqrt(sum of squares) over the tensors whose names `keep` accepts (all when null), in double.
inline double l2_norm(const std::map<std::string, Tensor>& tensors,
                      const std::function<bool(const std::string&)>& keep = nullptr) {
  double sq = 0;
  for (const auto& [name, t] : tensors) {
    if (keep && !keep(name)) continue;
    for (double v : t.to_double_vector()) sq += v * v;
  }
  return std::sqrt(sq);
}

}  // namespace msa::test
