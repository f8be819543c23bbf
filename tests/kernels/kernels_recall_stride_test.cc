// The recall measures' query stride (kernels/msa.h bounded_recall_stride, msa-train's periodic
// recall and msa-eval): unchanged where the measurement is cheap, raised for long sequences so that
// the sampled (query, key) pairs per sequence stay within kRecallPairsPerSequence.
#include <cstdint>

#include "gtest/gtest.h"
#include "kernels/msa.h"

namespace msa {
namespace {

TEST(KernelsRecallStrideTest, ShortSequencesKeepTheRequestedStride) {
  EXPECT_EQ(bounded_recall_stride(512, 16), 16);   // the CPU quality setup
  EXPECT_EQ(bounded_recall_stride(2048, 16), 16);  // the GPU-sized model: 2^18 pairs
  EXPECT_EQ(bounded_recall_stride(2048, 64), 64);
  EXPECT_EQ(bounded_recall_stride(8192, 1), 16);  // 2^26 / 2^22
}

TEST(KernelsRecallStrideTest, LongSequencesStayWithinThePairBudget) {
  EXPECT_EQ(bounded_recall_stride(131072, 16), 4096);  // 2^34 / 2^22: 32 sampled queries
  EXPECT_EQ(bounded_recall_stride(131072, 8192), 8192);
  for (const int64_t T : {1000, 5000, 65537, 131072, 1 << 20}) {
    const int64_t stride = bounded_recall_stride(T, 16);
    const int64_t sampled = strided_recall_count(T, stride);
    SCOPED_TRACE(testing::Message() << "T " << T << " stride " << stride);
    EXPECT_GE(sampled, 1);
    // At most ceil(T / stride) samples of at most T keys each.
    EXPECT_LE(sampled * T, kRecallPairsPerSequence + T);
  }
}

// A context-parallel rank's shard: T / cp queries, each seeing up to T keys, within the same
// budget as the whole sequence on one rank.
TEST(KernelsRecallStrideTest, ShardQueriesCountEveryKeyTheySee) {
  EXPECT_EQ(bounded_recall_stride(32768, 16, Device::kCPU, 131072), 1024);  // 2^32 / 2^22
  EXPECT_EQ(bounded_recall_stride(32768, 16, Device::kCPU, 32768), 256);    // keys = T: as before
  EXPECT_EQ(bounded_recall_stride(32768, 16, Device::kCPU), 256);
  EXPECT_EQ(bounded_recall_stride(65536, 16, Device::kCUDA, 131072), 32);  // 2^33 / 2^28
  for (const int cp : {2, 4, 8}) {
    const int64_t T = 131072, local = T / cp;
    const int64_t stride = bounded_recall_stride(local, 16, Device::kCPU, T);
    SCOPED_TRACE(testing::Message() << "cp " << cp << " stride " << stride);
    EXPECT_LE(strided_recall_count(local, stride) * T, kRecallPairsPerSequence + T);
    EXPECT_GE(strided_recall_count(local, stride), 1);
  }
}

// Tensors on the GPU are measured there (msa_recall_cuda.cu), under a budget 64x the CPU's.
TEST(KernelsRecallStrideTest, TheGpuBudgetKeepsMoreQueries) {
  EXPECT_EQ(bounded_recall_stride(2048, 16, Device::kCUDA), 16);
  EXPECT_EQ(bounded_recall_stride(16384, 16, Device::kCUDA), 16);   // 2^28 pairs exactly
  EXPECT_EQ(bounded_recall_stride(131072, 16, Device::kCUDA), 64);  // 2^34 / 2^28: 2048 queries
  EXPECT_EQ(bounded_recall_stride(131072, 16, Device::kCPU), 4096);
  for (const int64_t T : {1000, 65537, 131072, 1 << 20}) {
    const int64_t stride = bounded_recall_stride(T, 16, Device::kCUDA);
    SCOPED_TRACE(testing::Message() << "T " << T << " stride " << stride);
    EXPECT_LE(strided_recall_count(T, stride) * T, kGpuRecallPairsPerSequence + T);
    EXPECT_LE(stride, bounded_recall_stride(T, 16, Device::kCPU));
  }
}

// The largest stride whose sample holds more than position 0 (msa-train and msa-eval refuse
// larger ones): against counting the sample, and fast and overflow-free at huge lengths (a walk
// one stride at a time took seconds at 1e15 tokens).
TEST(KernelsRecallStrideTest, MaxStrideIsTheLargestSamplingTwoQueries) {
  for (int64_t T = 2; T <= 3000; ++T) {
    const int64_t s = max_recall_stride(T);
    SCOPED_TRACE(testing::Message() << "T " << T << " max stride " << s);
    ASSERT_GE(strided_recall_count(T, s), 2);
    if (s + 1 < T) ASSERT_EQ(strided_recall_count(T, s + 1), 1);
  }
  EXPECT_EQ(max_recall_stride(64), 39);
  EXPECT_EQ(max_recall_stride(128), 79);
  for (const int64_t T : {int64_t{1} << 40, int64_t{1000000000000000}, INT64_MAX}) {
    const int64_t s = max_recall_stride(T);
    SCOPED_TRACE(testing::Message() << "T " << T << " max stride " << s);
    EXPECT_GT(s, static_cast<int64_t>(static_cast<double>(T) * 0.6));
    EXPECT_LT(s, static_cast<int64_t>(static_cast<double>(T) * 0.62));
  }
}

}  // namespace
}  // namespace msa
