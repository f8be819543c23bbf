// The selector measures on the GPU (msa_oracle_recall on device tensors: msa_recall_cuda.cu, f32)
// against the CPU's f64 reference on the same bf16 values: random inputs (never zeros), strided
// and explicit query lists (unsorted, a repeat, several sequences), fewer queries than keys,
// partial last blocks, r from 1 to 16, k below and above the block count. The masses agree to f32
// rounding; a block ranking may differ only where two blocks' masses tie to that rounding, which
// moves one row's block recall by 1 / k. Also: the same inputs give the same values on every run,
// and a NaN key makes the ceiling NaN, as on the CPU. Skips without a CUDA device.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/msa.h"
#include "tests/testing/gpu.h"
#include "tests/testing/scoped_env.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h

struct RecallCase {
  int64_t batch, T, Tk, H, G, d;
  int B, K;
  float q_std;  // larger: peakier attention
};

std::string describe(const RecallCase& c) {
  return "batch=" + std::to_string(c.batch) + " T=" + std::to_string(c.T) +
         " Tk=" + std::to_string(c.Tk) + " H=" + std::to_string(c.H) + " G=" + std::to_string(c.G) +
         " d=" + std::to_string(c.d) + " B=" + std::to_string(c.B) + " k=" + std::to_string(c.K);
}

// Host (f32, bf16-rounded) and device (bf16) copies of q and k, and one selection (the CPU
// indexer's on random index inputs) on both devices.
struct RecallInputs {
  Tensor q, k, gq, gk;
  BlockSelection sel, gsel;
  double scale = 0;
};

RecallInputs make_inputs(const RecallCase& c, uint64_t seed) {
  RecallInputs in;
  in.q = rnd({c.batch, c.T, c.H, c.d}, seed, c.q_std);
  in.k = rnd({c.batch, c.Tk, c.G, c.d}, seed + 1);
  in.gq = gpu_bf16(in.q);
  in.gk = gpu_bf16(in.k);
  const Tensor iq = rnd({c.batch, c.T, c.G, 16}, seed + 2), ik = rnd({c.batch, c.Tk, 16}, seed + 3);
  in.sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
  msa_index_topk(iq, ik, in.sel);
  in.gsel = in.sel;
  in.gsel.indices = in.sel.indices.to(Device::kCUDA);
  in.gsel.counts = in.sel.counts.to(Device::kCUDA);
  in.scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  return in;
}

// n_rows: the (query, group) rows measured. A tie flip moves one row's block recall (at most 1).
void expect_close(const OracleRecall& gpu, const OracleRecall& cpu, int64_t n_rows,
                  const std::string& what) {
  // EXPECT_NEAR fails on NaN.
  EXPECT_NEAR(gpu.index_recall, cpu.index_recall, 1e-4) << what;
  EXPECT_NEAR(gpu.index_recall_ceiling, cpu.index_recall_ceiling, 1e-4) << what;
  EXPECT_NEAR(gpu.max_pool_recall_ceiling, cpu.max_pool_recall_ceiling, 1e-4) << what;
  EXPECT_NEAR(gpu.block_recall, cpu.block_recall, 1.0 / static_cast<double>(n_rows) + 1e-9) << what;
  // Not trivially all or nothing (k < n_b in every case), so that a wrong mass would show.
  EXPECT_GT(cpu.index_recall, 0.01) << what;
  EXPECT_LT(cpu.index_recall, 0.999) << what;
}

const std::vector<RecallCase> kCases = {
    {2, 300, 300, 4, 2, 16, 16, 4, 1.0f},        // the small recipe's sizes, r 2
    {1, 1000, 1000, 8, 2, 64, 64, 4, 3.0f},      // the GPU-sized model, peaky attention
    {2, 700, 900, 16, 4, 128, 128, 4, 2.0f},     // queries at offset 200, partial block
    {1, 500, 1500, 8, 2, 64, 64, 8, 2.0f},       // offset 1000: the cp shard's shape
    {1, 2100, 2100, 16, 1, 128, 128, 16, 2.0f},  // r 16, G 1, partial last block
    {1, 513, 513, 6, 2, 32, 32, 5, 2.0f},        // r 3: 21 queries of 3 heads per CTA
    {1, 1200, 1200, 2, 2, 64, 16, 8, 1.5f},      // r 1: 64 queries per CTA, four blocks per tile
    {1, 600, 600, 64, 1, 64, 64, 4, 2.0f},       // r 64: one query per CTA
    {1, 800, 800, 4, 2, 32, 16, 1, 2.0f},        // k 1: the local block only
    {1, 1000, 1000, 4, 1, 16, 16, 32, 2.0f},     // k 32
    {1, 4096, 4096, 64, 4, 128, 128, 16, 1.0f},  // the paper's shape
};

TEST(GpuMsaRecallTest, StridedMatchesCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 16100;
  for (const RecallCase& c : kCases) {
    const RecallInputs in = make_inputs(c, seed += 10);
    for (int64_t stride : {1, 7, 64}) {
      if (stride == 1 && c.T * c.Tk * c.H > 100000000) continue;  // the CPU reference's cost
      const OracleRecall cpu = msa_oracle_recall(in.q, in.k, in.sel, in.scale, stride);
      const OracleRecall gpu = msa_oracle_recall(in.gq, in.gk, in.gsel, in.scale, stride);
      const int64_t rows = c.batch * c.G * strided_recall_count(c.T, stride, c.Tk - c.T);
      expect_close(gpu, cpu, rows, describe(c) + " stride " + std::to_string(stride));
    }
  }
}

TEST(GpuMsaRecallTest, GivenQueriesMatchCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 16200;
  for (const RecallCase& c : {kCases[0], kCases[2], kCases[5]}) {
    const RecallInputs in = make_inputs(c, seed += 10);
    // Unsorted, a repeat, the first and last rows, both sequences where there are two.
    std::vector<RecallQuery> queries = {{0, c.T - 1}, {0, 0}, {0, c.T / 2}, {0, 5}, {0, c.T / 2}};
    if (c.batch > 1) queries.insert(queries.begin() + 2, {{1, 3}, {1, c.T - 2}});
    const OracleRecall cpu = msa_oracle_recall(in.q, in.k, in.sel, in.scale, queries);
    const OracleRecall gpu = msa_oracle_recall(in.gq, in.gk, in.gsel, in.scale, queries);
    expect_close(gpu, cpu, static_cast<int64_t>(queries.size()) * c.G,
                 describe(c) + " given queries");
  }
}

TEST(GpuMsaRecallTest, RepeatedRunsGiveTheSameValues) {
  SKIP_WITHOUT_GPU();
  const RecallInputs in = make_inputs(kCases[3], 16300);
  const OracleRecall a = msa_oracle_recall(in.gq, in.gk, in.gsel, in.scale, 3);
  const OracleRecall b = msa_oracle_recall(in.gq, in.gk, in.gsel, in.scale, 3);
  EXPECT_EQ(a.index_recall, b.index_recall);
  EXPECT_EQ(a.block_recall, b.block_recall);
  EXPECT_EQ(a.index_recall_ceiling, b.index_recall_ceiling);
  EXPECT_EQ(a.max_pool_recall_ceiling, b.max_pool_recall_ceiling);
  EXPECT_TRUE(std::isfinite(a.index_recall) && a.index_recall > 0.01);
}

// Queries in launches of a few (MSA_RECALL_CHUNK; tiles then end at chunk boundaries) give the
// values of one launch, to the bit.
TEST(GpuMsaRecallTest, ChunksGiveTheSameValues) {
  SKIP_WITHOUT_GPU();
  const RecallCase c = kCases[2];
  const RecallInputs in = make_inputs(c, 16500);
  const OracleRecall whole = msa_oracle_recall(in.gq, in.gk, in.gsel, in.scale, 5);
  for (const char* chunk : {"1", "7", "33"}) {
    const ScopedEnv env("MSA_RECALL_CHUNK", chunk);
    const OracleRecall part = msa_oracle_recall(in.gq, in.gk, in.gsel, in.scale, 5);
    EXPECT_EQ(part.index_recall, whole.index_recall) << chunk;
    EXPECT_EQ(part.block_recall, whole.block_recall) << chunk;
    EXPECT_EQ(part.index_recall_ceiling, whole.index_recall_ceiling) << chunk;
    EXPECT_EQ(part.max_pool_recall_ceiling, whole.max_pool_recall_ceiling) << chunk;
  }
  EXPECT_TRUE(std::isfinite(whole.index_recall) && whole.index_recall > 0.01);
}

TEST(GpuMsaRecallTest, NanKeyGivesNanCeiling) {
  SKIP_WITHOUT_GPU();
  const RecallCase c = kCases[1];
  RecallInputs in = make_inputs(c, 16400);
  Tensor k = in.k.clone();
  k.data<float>()[0] = std::nanf("");  // key 0 of group 0: every query of group 0 sees it
  const Tensor gk = gpu_bf16(k);
  EXPECT_TRUE(std::isnan(msa_oracle_recall(in.q, k, in.sel, in.scale, 16).index_recall_ceiling));
  EXPECT_TRUE(std::isnan(msa_oracle_recall(in.gq, gk, in.gsel, in.scale, 16).index_recall_ceiling));
}

}  // namespace
}  // namespace msa
