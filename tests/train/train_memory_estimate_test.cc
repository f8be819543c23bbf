// The memory estimate msa-train checks before allocating: exact parameter counts, activations
// linear in the tokens of a micro-batch and shrinking with recomputation, and a refusal that
// states the numbers.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"
#include "model/transformer.h"
#include "train/memory_estimate.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 96;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 64;
  c.msa.block_size = 8;
  c.msa.topk = 3;
  c.msa.index_dim = 8;
  c.attention = {AttentionKind::kDense, AttentionKind::kMsa, AttentionKind::kMsa};
  return c;
}

MemoryEstimateOptions options(int64_t batch, int64_t seq_len) {
  MemoryEstimateOptions o;
  o.model = small_config();
  o.batch_size = batch;
  o.seq_len = seq_len;
  return o;
}

TEST(MemoryEstimateTest, ParameterCountIsExactlyTheRegistrysAtEveryVariant) {
  for (int variant = 0; variant < 4; ++variant) {
    MemoryEstimateOptions o = options(2, 48);
    o.model.tied_embeddings = variant == 1;
    o.model.qkv_bias = variant == 2;
    o.model.qk_norm = variant == 3;
    Transformer model(o.model, DType::kF32, Device::kCPU);
    const MemoryEstimate e = estimate_training_memory(o);
    EXPECT_EQ(e.parameter_count, model.params().numel()) << "variant " << variant;
    EXPECT_EQ(e.parameters, 4.0 * model.params().numel()) << "variant " << variant;
    EXPECT_EQ(e.gradients, 4.0 * model.params().numel()) << "variant " << variant;
  }
}

TEST(MemoryEstimateTest, TensorParallelCountsThisRanksPart) {
  MemoryEstimateOptions o = options(2, 48);
  o.tp = 2;
  const ParameterSet local =
      ParameterSet::allocate(local_param_specs(o.model, 2), DType::kF32, Device::kCPU);
  const MemoryEstimate e = estimate_training_memory(o);
  EXPECT_EQ(e.parameter_count, local.numel());
  EXPECT_LT(e.parameter_count, estimate_training_memory(options(2, 48)).parameter_count);
}

TEST(MemoryEstimateTest, OptimizerStateFollowsTheDeviceAndZero1) {
  MemoryEstimateOptions o = options(2, 48);
  const double P = static_cast<double>(estimate_training_memory(o).parameter_count);
  EXPECT_EQ(estimate_training_memory(o).optimizer, 8 * P);  // m, v; f32 weights are the masters
  o.cuda = true;
  const MemoryEstimate cuda = estimate_training_memory(o);
  EXPECT_EQ(cuda.optimizer, 12 * P);  // m, v and the f32 masters of the bf16 weights
  EXPECT_EQ(cuda.parameters, 2 * P);  // bf16
  EXPECT_EQ(cuda.gradients, 4 * P);   // f32
  o.cuda = false;
  o.zero1 = true;
  o.dp = 4;
  EXPECT_EQ(estimate_training_memory(o).optimizer, 16 * P / 4);
}

// Without ZeRO-1 a data-parallel group sums the gradients through buckets that copy all of them
// (f32, for the whole run): per-rank memory rose by 4 bytes a parameter from dp 1 to dp 2 and the
// estimate stayed. ZeRO-1 reduce-scatters without them, from a flat f32 copy of all gradients
// made at each step (and all-gathers the weights into a buffer no larger): ZeRO-1 ranks peaked
// 4 bytes a parameter above an estimate that left it out.
TEST(MemoryEstimateTest, DataParallelBucketsCopyTheGradients) {
  MemoryEstimateOptions o = options(2, 48);
  const double P = static_cast<double>(estimate_training_memory(o).parameter_count);
  for (bool cuda : {false, true}) {
    o.cuda = cuda;
    o.dp = 1;
    EXPECT_EQ(estimate_training_memory(o).gradients, 4 * P);
    o.dp = 2;
    EXPECT_EQ(estimate_training_memory(o).gradients, 8 * P);
    o.zero1 = true;
    EXPECT_EQ(estimate_training_memory(o).gradients, 8 * P);
    o.dp = 1;
    EXPECT_EQ(estimate_training_memory(o).gradients, 8 * P);
    o.zero1 = false;
  }
}

TEST(MemoryEstimateTest, ActivationsGrowLinearlyInTheTokensOfAMicroBatch) {
  for (Recompute r : {Recompute::kNone, Recompute::kAttention, Recompute::kFull}) {
    MemoryEstimateOptions t1 = options(2, 64), t2 = options(2, 128), t3 = options(2, 192),
                          b2 = options(4, 64);
    t1.recompute = t2.recompute = t3.recompute = b2.recompute = r;
    const MemoryEstimate e1 = estimate_training_memory(t1), e2 = estimate_training_memory(t2),
                         e3 = estimate_training_memory(t3), eb = estimate_training_memory(b2);
    // Each step in the length adds the same bytes (no T x T term); the per-layer dW_IQ / dW_IK
    // of MSA layers are the only part that does not scale with the tokens.
    EXPECT_GT(e2.activations, e1.activations) << recompute_name(r);
    EXPECT_DOUBLE_EQ(e3.activations - e2.activations, e2.activations - e1.activations)
        << recompute_name(r);
    EXPECT_DOUBLE_EQ(e3.workspace - e2.workspace, e2.workspace - e1.workspace) << recompute_name(r);
    EXPECT_DOUBLE_EQ(e2.workspace, 2 * e1.workspace) << recompute_name(r);
    // The batch counts the same as the length.
    EXPECT_DOUBLE_EQ(eb.activations, e2.activations) << recompute_name(r);
    // The weights and their state do not depend on the batch.
    EXPECT_EQ(e2.parameters + e2.gradients + e2.optimizer,
              e1.parameters + e1.gradients + e1.optimizer);
  }
}

// A context-parallel rank keeps, per layer, the keys and values of the whole sequence (k_ctx,
// v_ctx: [batch, seq_len x cp, G, d]) besides its shard's activations, and its backward sums
// their gradients at that length: both were left out, so a run at long contexts passed the check
// with ~a quarter of its activations uncounted.
TEST(MemoryEstimateTest, ContextParallelCountsTheGatheredKeys) {
  MemoryEstimateOptions one = options(2, 64), four = options(2, 64);  // 64 tokens per rank
  four.cp = 4;
  const MemoryEstimate e1 = estimate_training_memory(one), e4 = estimate_training_memory(four);
  const ModelConfig& c = one.model;
  const double gathered = 2.0 * (2 * 64 * 4) * c.n_kv_heads * c.head_dim * 4;  // k_ctx + v_ctx
  EXPECT_DOUBLE_EQ(e4.activations - e1.activations, c.n_layers * gathered);
  EXPECT_GT(e4.workspace, e1.workspace);
  EXPECT_EQ(e4.parameters, e1.parameters);
}

TEST(MemoryEstimateTest, RecomputationKeepsLessThanNone) {
  MemoryEstimateOptions o = options(2, 1024);
  const double none = estimate_training_memory(o).activations;
  o.recompute = Recompute::kAttention;
  const double attention = estimate_training_memory(o).activations;
  o.recompute = Recompute::kFull;
  const double full = estimate_training_memory(o).activations;
  EXPECT_LT(attention, none);
  EXPECT_LT(full, attention);
}

TEST(MemoryEstimateTest, AbsurdSizesGiveAbsurdNotWrappedEstimates) {
  MemoryEstimateOptions o = options(int64_t{1} << 40, int64_t{1} << 40);
  const MemoryEstimate e = estimate_training_memory(o);
  EXPECT_GT(e.total(), 1e24);  // 2^80 tokens
}

TEST(MemoryEstimateTest, SizesPrintInGibOrMib) {
  EXPECT_EQ(memory_string(1.5 * 1024 * 1024 * 1024), "1.50 GiB");
  EXPECT_EQ(memory_string(300.0 * 1024 * 1024), "300.0 MiB");
}

TEST(MemoryEstimateTest, RefusalNamesTheNumbersAndWhatToTry) {
  const MemoryEstimateOptions o = options(8, 4096);
  const MemoryEstimate e = estimate_training_memory(o);
  EXPECT_TRUE(check_memory_fits(e, o, e.total(), 1, "cuda:0").ok());  // fits exactly: runs
  const absl::Status s = check_memory_fits(e, o, 0.5 * e.total(), 1, "cuda:0");
  ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  const std::string m(s.message());
  EXPECT_THAT(m, HasSubstr("needs ~" + memory_string(e.total()) + " per rank on cuda:0, " +
                           memory_string(0.5 * e.total()) + " free"));
  EXPECT_THAT(m, HasSubstr("--recompute=full"));
  EXPECT_THAT(m, HasSubstr("--batch_size"));
  EXPECT_THAT(m, HasSubstr("--tp"));
  EXPECT_THAT(m, HasSubstr("--skip_memory_check"));
  // Ranks that share the memory (the CPU processes of a node) need it together.
  EXPECT_TRUE(check_memory_fits(e, o, 1.5 * e.total(), 1, "cpu").ok());
  const absl::Status shared = check_memory_fits(e, o, 1.5 * e.total(), 2, "cpu");
  EXPECT_FALSE(shared.ok());
  EXPECT_THAT(std::string(shared.message()), HasSubstr("x 2 ranks sharing it"));
}

}  // namespace
}  // namespace msa
