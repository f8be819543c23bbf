// The NCCL backend (run under mpirun; skips without CUDA): every collective on CUDA tensors
// agrees with the MPI backend on CPU copies (f32 to rounding, bf16 within bf16 tolerance),
// async all-reduces included; the data-parallel gradient buckets of a bf16 model on the GPU sum
// like one rank; the vocab-parallel cross entropy on bf16 CUDA logits matches the f32 CPU one.
#include <mpi.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "core/cuda_device.h"
#include "core/rng.h"
#include "gtest/gtest.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"
#include "model/transformer.h"
#include "tests/testing/parallel_training.h"
#include "train/optimizer.h"

namespace msa {
namespace {

class MpiNcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!MSA_HAS_CUDA || !cuda_available()) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(select_cuda_device(node_local_rank(), -1).ok());
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    nccl_ = make_nccl_communicator(MPI_COMM_WORLD);
    mpi_ = make_mpi_communicator(MPI_COMM_WORLD);
  }
  // A rank-dependent f32 CPU tensor.
  Tensor random(int64_t n, uint64_t salt) const {
    Tensor t = Tensor::empty({n}, DType::kF32);
    fill_normal(t, rng_substream(salt, static_cast<uint64_t>(rank_)), 0.0f, 1.0f);
    return t;
  }
  static double max_abs_diff(const Tensor& a, const Tensor& b) {
    const auto x = a.to_double_vector(), y = b.to_double_vector();
    EXPECT_EQ(x.size(), y.size());
    if (x.size() != y.size() || x.empty()) return std::numeric_limits<double>::infinity();
    double m = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double d = std::abs(x[i] - y[i]);
      if (!std::isfinite(d)) return std::numeric_limits<double>::infinity();  // NaN never passes
      m = std::max(m, d);
    }
    return m;
  }
  int rank_ = 0, size_ = 1;
  std::unique_ptr<Communicator> nccl_, mpi_;
};

TEST_F(MpiNcclTest, CollectivesMatchTheMpiBackend) {
  const int64_t n = 1000 * size_;
  const Tensor host = random(n, 1);
  // All-reduce, blocking and async, f32 (exact up to summation order) and bf16.
  Tensor expect = host.clone();
  mpi_->all_reduce_sum(expect);
  Tensor dev = host.to(Device::kCUDA);
  nccl_->all_reduce_sum(dev);
  EXPECT_LT(max_abs_diff(dev, expect), 1e-5);
  dev = host.to(Device::kCUDA);
  auto work = nccl_->all_reduce_sum_async(dev);
  work->wait();
  EXPECT_LT(max_abs_diff(dev, expect), 1e-5);
  Tensor dev16 = host.to(DType::kBF16).to(Device::kCUDA);
  nccl_->all_reduce_sum(dev16);
  // bf16: inputs rounded (2^-9 relative each), partial sums rounded: a few bf16 ulps of the
  // largest magnitude involved.
  EXPECT_LT(max_abs_diff(dev16, expect), 0.05 * size_);
  // Reduce-scatter and all-gather.
  Tensor rs_expect = Tensor::empty({n / size_}, DType::kF32);
  mpi_->reduce_scatter_sum(host, rs_expect);
  Tensor rs = Tensor::empty({n / size_}, DType::kF32, Device::kCUDA);
  nccl_->reduce_scatter_sum(host.to(Device::kCUDA), rs);
  EXPECT_LT(max_abs_diff(rs, rs_expect), 1e-5);
  Tensor ag_expect = Tensor::empty({n * size_}, DType::kF32);
  mpi_->all_gather(host, ag_expect);
  Tensor ag = Tensor::empty({n * size_}, DType::kF32, Device::kCUDA);
  nccl_->all_gather(host.to(Device::kCUDA), ag);
  EXPECT_EQ(max_abs_diff(ag, ag_expect), 0.0);
  // Broadcast from the last rank.
  Tensor b_expect = host.clone();
  mpi_->broadcast(b_expect, size_ - 1);
  Tensor b = host.to(Device::kCUDA);
  nccl_->broadcast(b, size_ - 1);
  EXPECT_EQ(max_abs_diff(b, b_expect), 0.0);
  // CPU tensors go through MPI.
  Tensor cpu = host.clone();
  nccl_->all_reduce_sum(cpu);
  EXPECT_EQ(max_abs_diff(cpu, expect), 0.0);
}

// Data parallelism on the GPU: a bf16 model's f32 gradients, bucketed (many small buckets,
// started as the backward would report them) and reduced through NCCL, equal the sum of every
// rank's gradients.
TEST_F(MpiNcclTest, GradientBucketsSumOverRanks) {
  ModelConfig c;
  c.vocab_size = 96;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 64;
  ParameterSet params = ParameterSet::allocate(model_param_specs(c), DType::kBF16, Device::kCUDA);
  std::map<std::string, Tensor> expect;
  uint64_t salt = 10;
  for (Parameter& p : params.all()) {
    const Tensor g = random(p.grad.numel(), ++salt);
    p.grad.copy_from(g.view(p.grad.shape()).to(Device::kCUDA));
    Tensor sum = g.clone();
    mpi_->all_reduce_sum(sum);
    expect[p.spec.name] = sum;
  }
  OptimizerConfig oc;
  oc.dp = nccl_.get();
  oc.bucket_bytes = 8192;
  AdamW optimizer(params, oc);
  optimizer.begin_reduction();
  for (auto it = params.all().rbegin(); it != params.all().rend(); ++it)
    optimizer.grads_ready({&*it});
  optimizer.reduce_gradients();
  for (const Parameter& p : params.all())
    EXPECT_LT(max_abs_diff(p.grad.view({p.grad.numel()}), expect[p.spec.name]), 1e-5)
        << p.spec.name;
}

// Vocab-parallel cross entropy over the NCCL group with bf16 CUDA logits (the tp ranks' vocabulary
// columns) equals the f32 CPU cross entropy of the whole logits within bf16 tolerance.
TEST_F(MpiNcclTest, VocabParallelCrossEntropyInBf16) {
  const int64_t N = 64, V = 32 * size_, Vl = V / size_;
  Tensor full = Tensor::empty({N, V}, DType::kF32);
  fill_normal(full, 77, 0.0f, 2.0f);  // the same on every rank
  std::vector<int32_t> t(N);
  for (int64_t i = 0; i < N; ++i) t[i] = static_cast<int32_t>((i * 7) % V);
  t[3] = kIgnoreIndex;
  const Tensor targets = Tensor::from_vector<int32_t>({N}, t);
  Tensor lse_ref = Tensor::empty({N}, DType::kF32);
  const VocabParallelCrossEntropy ref =
      vocab_parallel_cross_entropy_forward(full, targets, 0, kIgnoreIndex, lse_ref, nullptr);
  const Tensor mine = tp_slice(full, TpSplit::kCols, rank_, size_);
  Tensor logits = mine.to(DType::kBF16).to(Device::kCUDA);
  Tensor lse = Tensor::empty({N}, DType::kF32, Device::kCUDA);
  const VocabParallelCrossEntropy got = vocab_parallel_cross_entropy_forward(
      logits, targets.to(Device::kCUDA), rank_ * Vl, kIgnoreIndex, lse, nccl_.get());
  EXPECT_EQ(got.n_counted, ref.n_counted);
  EXPECT_NEAR(got.loss, ref.loss, 2e-2 * ref.loss);
  EXPECT_LT(max_abs_diff(lse, lse_ref), 5e-2);
}

// Issue 5's GPU equivalence: bf16 training over NCCL at dp = world, at tp = 2 (and dp x tp when
// the world allows) follows the one-GPU bf16 run with the same global batch: every step's loss
// within 2%, and each tensor's update over the run (final minus initial master weights) within
// 25% (relative L2) of the one-GPU run's update. Comparing updates, not weights: 10 AdamW steps
// at lr 3e-4 move a weight by ~1e-3 relative, so a weight tolerance of 1% would also pass a
// parallel run that did not train at all (its update gap is 1). The parallel runs reduce in
// other orders and, with tp, all-reduce bf16 partial sums, so they are not bit-equal.
void expect_bf16_training_matches_one_gpu(const ModelConfig& c, int tp, const char* what) {
  auto made = make_process_groups(tp, /*cp=*/1, /*nccl=*/true);
  ASSERT_TRUE(made.ok()) << made.status();
  const ProcessGroups& groups = *made;
  const int steps = 10;
  const test::RunResult single =
      test::train(c, nullptr, false, 2 * groups.dp_size, steps, 1, 0, 0, Device::kCUDA, 3e-4);
  const test::RunResult parallel =
      test::train(c, &groups, false, 2, steps, 1, 0, 0, Device::kCUDA, 3e-4);
  ASSERT_EQ(parallel.losses.size(), single.losses.size());
  double worst = 0;
  for (size_t s = 0; s < single.losses.size(); ++s) {
    const double gap = std::abs(parallel.losses[s] - single.losses[s]) / single.losses[s];
    worst = std::isfinite(gap) ? std::max(worst, gap) : std::numeric_limits<double>::infinity();
  }
  std::string worst_tensor, moved_tensor;
  const double update_gap = test::max_rel_update_diff(parallel.params, single.params,
                                                      single.initial_params, &worst_tensor);
  // How far one GPU's run moved its weights (relative L2, the smallest over tensors): the scale
  // the update gap is measured against.
  double moved = std::numeric_limits<double>::infinity();
  for (const auto& [name, t] : single.params) {
    const double m = test::max_rel_diff({{name, t}}, {{name, single.initial_params.at(name)}});
    if (m < moved) moved_tensor = name;
    moved = std::min(moved, m);
  }
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0)
    std::printf(
        "%s, %s: loss %.4f -> %.4f (one GPU %.4f -> %.4f); worst step loss gap %.2e, "
        "update gap %.2e (%s); smallest update %.2e of the weights (%s)\n",
        what, groups.describe().c_str(), parallel.losses.front(), parallel.losses.back(),
        single.losses.front(), single.losses.back(), worst, update_gap, worst_tensor.c_str(),
        moved, moved_tensor.c_str());
  EXPECT_GT(moved, 0.0) << "the one-GPU run did not change " << moved_tensor;
  EXPECT_LT(worst, 2e-2) << groups.describe();
  EXPECT_LT(update_gap, 0.25) << groups.describe() << ", worst " << worst_tensor;
}

TEST_F(MpiNcclTest, Bf16DataParallelTrainingMatchesOneGpu) {
  expect_bf16_training_matches_one_gpu(test::tiny_gpu_model(false), 1, "dense");
  expect_bf16_training_matches_one_gpu(test::tiny_gpu_model(true), 1, "msa");
}

TEST_F(MpiNcclTest, Bf16TensorParallelTrainingMatchesOneGpu) {
  if (size_ % 2 != 0) GTEST_SKIP() << "needs an even number of ranks";
  expect_bf16_training_matches_one_gpu(test::tiny_gpu_model(false), 2, "dense");
  expect_bf16_training_matches_one_gpu(test::tiny_gpu_model(true), 2, "msa");
}

// The gradients of one bf16 step over NCCL (dp = world / 2 x tp 2, or dp = world) in every MSA
// phase, the shared index key W_IK's (replicated, summed over tp) included, against one GPU with
// the global batch: each tensor within 5% (relative L2; bf16 activations, other reduction orders;
// a W_IK gradient missing its sum over tp would be off by ~50%).
TEST_F(MpiNcclTest, Bf16GradientsMatchOneGpuInEveryPhase) {
  const int tp = size_ % 2 == 0 ? 2 : 1;
  auto made = make_process_groups(tp, /*cp=*/1, /*nccl=*/true);
  ASSERT_TRUE(made.ok()) << made.status();
  const ProcessGroups& groups = *made;
  const ModelConfig c = test::tiny_gpu_model(true);
  for (test::Phase phase :
       {test::Phase::kSparse, test::Phase::kDenseAttention, test::Phase::kFrozenBackboneWarmup}) {
    const test::StepGradients single =
        test::step_gradients(c, nullptr, 2 * groups.dp_size, phase, 1, Device::kCUDA);
    const test::StepGradients parallel =
        test::step_gradients(c, &groups, 2, phase, 1, Device::kCUDA);
    std::string worst;
    const double gap = test::max_rel_diff(parallel.grads, single.grads, &worst);
    if (rank_ == 0)
      std::printf("%s, %s: gradients rel. L2 gap %.2e (%s)\n", test::phase_name(phase),
                  groups.describe().c_str(), gap, worst.c_str());
    EXPECT_LT(gap, 5e-2) << test::phase_name(phase) << ", worst " << worst;
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string name = "layers." + std::to_string(l) + ".attn.index_wk.weight";
      double norm = 0;
      for (double g : single.grads.at(name).to_double_vector()) norm += g * g;
      EXPECT_GT(norm, 0.0) << name << " (" << test::phase_name(phase) << ")";
    }
  }
}

}  // namespace
}  // namespace msa
