// Training harness shared by the multi-rank tests: a tiny model trained on synthetic kv-recall
// on a data x tensor-parallel layout (or on one rank), and a per-tensor relative difference.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
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
  std::map<std::string, Tensor> params;  // full tensors
};

// Trains `steps` steps with `batch` sequences per data-parallel rank. groups == nullptr: this
// rank alone. On Device::kCUDA the model computes in bf16 (f32 masters), as msa-train does.
inline RunResult train(const ModelConfig& c, const ProcessGroups* groups, bool zero1, int64_t batch,
                       int steps, int grad_accum = 1, int64_t index_warmup = 0,
                       int64_t dense_steps = 0, Device device = Device::kCPU,
                       double max_lr = 3e-3) {
  const TensorParallel tp = tensor_parallel_of(groups ? groups->tp.get() : nullptr);
  Communicator* dp = groups ? groups->dp.get() : nullptr;
  Transformer model(c, device == Device::kCUDA ? DType::kBF16 : DType::kF32, device, tp);
  model.params().initialize(3, tp.rank, tp.size);
  OptimizerConfig oc;
  oc.dp = dp;
  oc.tp = tp.enabled() ? tp.comm : nullptr;
  oc.zero1 = zero1;
  oc.bucket_bytes = 4096;  // several buckets even for a tiny model
  AdamW optimizer(model.params(), oc);
  DataLayout layout{grad_accum, dp ? dp->rank() : 0, dp ? dp->size() : 1};
  auto data = make_synthetic_source("kv-recall", c.vocab_size, batch, 48, 3, -1, 11, layout, false);
  EXPECT_TRUE(data.ok());
  TrainerConfig tc;
  tc.steps = steps;
  tc.grad_accum = grad_accum;
  tc.lr.max_lr = max_lr;
  tc.lr.min_lr = max_lr / 10;
  tc.lr.warmup_steps = 3;
  tc.lr.total_steps = steps;
  tc.quiet = true;
  tc.dp = dp;
  tc.index_warmup_steps = index_warmup;
  tc.dense_attention_steps = dense_steps;
  Trainer trainer(model, optimizer, **data, tc);
  RunResult r;
  EXPECT_TRUE(trainer
                  .run(1,
                       [&](const StepMetrics& m) {
                         r.losses.push_back(m.loss);
                         return true;
                       })
                  .ok());
  r.params = optimizer.master_weights();
  if (tp.enabled())
    for (auto& [name, t] : r.params)
      t = tp_gather(t, model.params().at(name).spec.tp_split, tp.comm);
  return r;
}

// Largest over tensors of ||a - b|| / ||b|| (L2): the relative difference of each tensor.
// (Element-wise ratios are ill-posed for Adam's first steps, whose update is lr * g / |g| and so
// flips with the last bit of a near-zero gradient's reduction order.)
inline double max_rel_diff(const std::map<std::string, Tensor>& a,
                           const std::map<std::string, Tensor>& b,
                           std::string* worst_name = nullptr) {
  double worst = 0;
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    EXPECT_TRUE(b.count(name)) << name;
    if (!b.count(name)) continue;
    const auto x = t.to_double_vector(), y = b.at(name).to_double_vector();
    EXPECT_EQ(x.size(), y.size()) << name;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
      diff += (x[i] - y[i]) * (x[i] - y[i]);
      norm += y[i] * y[i];
    }
    const double rel = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12);
    if (rel > worst && worst_name != nullptr) *worst_name = name;
    worst = std::max(worst, rel);
  }
  return worst;
}

}  // namespace msa::test
