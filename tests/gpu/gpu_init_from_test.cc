// msa-train --init_from on the GPU: the optimizer's f32 masters start from the checkpoint's f32
// weights, not from the bf16 compute weights read back (those lost 8 mantissa bits, so a phase-2
// run trained from rounded weights). Skips without a CUDA device.
#include <cmath>
#include <cstdint>
#include <string>

#include "core/bf16.h"
#include "core/tensor.h"
#include "gtest/gtest.h"
#include "launch/train_program.h"
#include "tests/testing/command.h"
#include "train/checkpoint.h"

namespace msa {
namespace {

TrainProgramOptions tiny_run(const std::string& dir, const std::string& device) {
  TrainProgramOptions o;
  o.model.vocab_size = 96;
  o.model.d_model = 64;
  o.model.n_layers = 2;
  o.model.n_heads = 4;
  o.model.n_kv_heads = 2;
  o.model.head_dim = 16;
  o.model.ffn_dim = 128;
  o.model.msa.block_size = 16;
  o.model.msa.topk = 2;
  o.model.msa.index_dim = 16;
  o.attention_spec = "msa,msa";
  o.device = device;
  o.data = "synthetic:kv-recall";
  o.batch_size = 2;
  o.seq_len = 64;
  o.trainer.steps = 1;
  o.trainer.lr.warmup_steps = 0;
  o.trainer.quiet = true;
  o.trainer.recall_every = 0;
  o.checkpoint_dir = dir;
  return o;
}

TEST(GpuInitFromTest, MastersAreTheCheckpointsF32Weights) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = test::fresh_dir("gpu_init_from");
  // A CPU run's checkpoint: f32 weights, nearly none of which bf16 holds exactly.
  ASSERT_TRUE(run_train_program(tiny_run(dir + "/cpu", "cpu")).ok());
  const std::string source = checkpoint_path(dir + "/cpu", 1);

  // One GPU step from it whose update is far below half an f32 ulp of any weight: the masters it
  // saves are the ones it started from.
  TrainProgramOptions gpu = tiny_run(dir + "/gpu", "cuda");
  gpu.init_from = source;
  gpu.trainer.lr.max_lr = 1e-30;
  gpu.trainer.lr.min_lr = 1e-30;
  gpu.optimizer.weight_decay = 0;
  const absl::Status s = run_train_program(gpu);
  ASSERT_TRUE(s.ok()) << s;

  auto from = load_checkpoint(source, /*weights_only=*/true);
  auto after = load_checkpoint(checkpoint_path(dir + "/gpu", 1), /*weights_only=*/true);
  ASSERT_TRUE(from.ok()) << from.status();
  ASSERT_TRUE(after.ok()) << after.status();
  int64_t values = 0, differ = 0, not_bf16 = 0;
  for (const auto& [name, t] : from->params) {
    ASSERT_TRUE(after->params.count(name)) << name;
    const Tensor a = t.to(DType::kF32), b = after->params.at(name).to(DType::kF32);
    ASSERT_EQ(a.numel(), b.numel()) << name;
    for (int64_t i = 0; i < a.numel(); ++i) {
      const float x = a.data<float>()[i], y = b.data<float>()[i];
      ++values;
      if (!(x == y)) ++differ;  // NaN counts as a difference
      if (bf16_to_float(float_to_bf16(x)) != x) ++not_bf16;
    }
  }
  // The comparison can fail: most weights are not bf16 values, so rounded masters would differ.
  EXPECT_GT(not_bf16, values / 2);
  EXPECT_EQ(differ, 0) << "of " << values << " weights";
}

}  // namespace
}  // namespace msa
