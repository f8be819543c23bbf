// ZeRO-1 on GPU parameters (run under mpirun; skips without CUDA): bf16 training with the f32
// masters and AdamW moments sharded over the data-parallel ranks on the device follows plain data
// parallelism on the GPU step by step, and the optimizer's device memory per rank falls with dp.
//
// The ranks may share one GPU: the collectives stage through the host
// (tests/testing/host_staging_communicator.h). What this tests is the optimizer's sharding on the
// device (reduce-scatter into device shards, AdamW on them, the bf16 all-gather into the weights,
// checkpoint gathers).
#include <mpi.h>

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "core/cuda_device.h"
#include "gtest/gtest.h"
#include "model/transformer.h"
#include "tests/testing/host_staging_communicator.h"
#include "tests/testing/parallel_training.h"
#include "train/optimizer.h"

namespace msa {
namespace {

// dp = world, tp = 1, collectives staged through the host.
ProcessGroups staged_data_parallel() {
  auto made = test::host_staged_process_groups(1, 1);
  MSA_CHECK(made.ok(), "%s", std::string(made.status().message()));
  return std::move(*made);
}

class MpiZero1GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!MSA_HAS_CUDA || !cuda_available()) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(select_cuda_device(node_local_rank(), -1).ok());
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  }
  int rank_ = 0;
};

// Plain dp and ZeRO-1 sum the same gradients (in other orders: all-reduce vs reduce-scatter) and
// run the same AdamW kernel on the same f32 values, so they agree to f32 rounding: losses within
// 1e-4 relative over 8 steps, each tensor's update (final minus initial masters) within 1e-2 of
// plain dp's. A shard written to the wrong place, a missing all-gather (other ranks' weights stay
// at their initial values: update gap 1) or a gradient not summed over dp fails.
TEST_F(MpiZero1GpuTest, TrainingMatchesPlainDataParallel) {
  const ProcessGroups groups = staged_data_parallel();
  for (bool msa_layers : {false, true}) {
    const ModelConfig c = test::tiny_gpu_model(msa_layers);
    const int steps = 8;
    const test::RunResult plain =
        test::train(c, &groups, /*zero1=*/false, 2, steps, 1, 0, 0, Device::kCUDA, 1e-3);
    const test::RunResult sharded =
        test::train(c, &groups, /*zero1=*/true, 2, steps, 1, 0, 0, Device::kCUDA, 1e-3);
    ASSERT_EQ(sharded.losses.size(), plain.losses.size());
    double worst = 0;
    for (size_t s = 0; s < plain.losses.size(); ++s) {
      const double gap = std::abs(sharded.losses[s] - plain.losses[s]) / plain.losses[s];
      worst = std::isfinite(gap) ? std::max(worst, gap) : std::numeric_limits<double>::infinity();
    }
    std::string worst_tensor;
    const double update_gap = test::max_rel_update_diff(sharded.params, plain.params,
                                                        plain.initial_params, &worst_tensor);
    const double init_gap = test::max_rel_diff(sharded.initial_params, plain.initial_params);
    if (rank_ == 0)
      std::printf("%s, dp %d on the GPU: loss %.4f -> %.4f; ZeRO-1 vs plain dp: worst step loss "
                  "gap %.2e, update gap %.2e (%s)\n",
                  msa_layers ? "msa" : "dense", groups.dp_size, plain.losses.front(),
                  plain.losses.back(), worst, update_gap, worst_tensor.c_str());
    EXPECT_EQ(init_gap, 0.0);
    EXPECT_LT(worst, 1e-4);
    EXPECT_LT(update_gap, 1e-2) << worst_tensor;
    EXPECT_LT(plain.losses.back(), plain.losses.front());  // it trained
  }
}

// What the optimizer holds on the device per rank: plain AdamW keeps f32 masters of the bf16
// weights and both moments (12 bytes per parameter); ZeRO-1 keeps the shards of masters,
// moments and reduced gradients (16 bytes per parameter / dp, plus padding).
TEST_F(MpiZero1GpuTest, OptimizerMemoryPerRankFallsWithDp) {
  const ProcessGroups groups = staged_data_parallel();
  Transformer model(test::tiny_gpu_model(true), DType::kBF16, Device::kCUDA);
  model.params().initialize(3, 0, 1);
  int64_t count = 0;
  for (const Parameter& p : model.params().all()) count += p.value.numel();
  auto bytes_of = [&](bool zero1) {
    const size_t before = cuda_memory_stats().in_use_bytes;
    OptimizerConfig oc;
    oc.dp = groups.dp.get();
    oc.zero1 = zero1;
    AdamW opt(model.params(), oc);
    return static_cast<double>(cuda_memory_stats().in_use_bytes - before);
  };
  const double plain = bytes_of(false), sharded = bytes_of(true);
  const double P = static_cast<double>(count), dp = groups.dp_size;
  if (rank_ == 0)
    std::printf("%lld parameters, dp %d: optimizer device bytes per rank plain %.0f "
                "(%.2f / param), ZeRO-1 %.0f (%.2f / param)\n",
                static_cast<long long>(count), groups.dp_size, plain, plain / P, sharded,
                sharded / P);
  EXPECT_GE(plain, 12 * P);
  EXPECT_LE(sharded, 16 * (P / dp + 1) + 4096);  // + the allocator's rounding of 4 tensors
  EXPECT_GT(sharded, 0.0);
}

}  // namespace
}  // namespace msa
