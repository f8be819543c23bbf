// The model FLOPs MFU divides by the peak (msa-bench step). The attention term once counted
// 6 H d per key, half of QK^T and PV's 2 d FLOPs each forward and twice that backward, and MSA
// layers min(T/2, k B) keys where the selected blocks hold fewer at short T.
#include "model/model_flops.h"

#include <algorithm>
#include <cstdint>

#include "gtest/gtest.h"

namespace msa {
namespace {

// The keys query t attends, counted token by token: dense every s <= t; MSA the tokens s <= t of
// the local block c(t) and of the k - 1 blocks before it (all blocks when fewer exist; which
// earlier blocks does not change the count, since every earlier block is whole).
double brute_mean_keys(AttentionKind kind, int64_t T, int64_t B, int64_t k) {
  double sum = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s <= t; ++s)
      if (kind == AttentionKind::kDense || t / B - s / B < k) sum += 1;
  return sum / static_cast<double>(T);
}

TEST(ModelFlopsTest, MeanAttendedKeysCountsEveryKeyOfTheSelection) {
  ModelConfig c;
  for (const int64_t T : {1, 5, 128, 300, 4096})
    for (const int B : {1, 4, 128})
      for (const int k : {1, 2, 16}) {
        c.msa.block_size = B;
        c.msa.topk = k;
        for (const AttentionKind kind : {AttentionKind::kDense, AttentionKind::kMsa})
          EXPECT_DOUBLE_EQ(mean_attended_keys(c, kind, T), brute_mean_keys(kind, T, B, k))
              << "T " << T << " B " << B << " k " << k << " " << attention_kind_name(kind);
      }
  // By hand: T 4, B 2, k 1 attends 1, 2, 1, 2 keys.
  c.msa.block_size = 2;
  c.msa.topk = 1;
  EXPECT_DOUBLE_EQ(mean_attended_keys(c, AttentionKind::kMsa, 4), 1.5);
  EXPECT_DOUBLE_EQ(mean_attended_keys(c, AttentionKind::kDense, 4), 2.5);
}

TEST(ModelFlopsTest, TrainFlopsPerTokenByHand) {
  ModelConfig c;
  c.vocab_size = 10;
  c.d_model = 4;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 2;
  c.ffn_dim = 8;
  c.attention = {AttentionKind::kDense, AttentionKind::kMsa};
  c.msa.block_size = 2;
  c.msa.topk = 1;
  c.msa.index_dim = 2;
  // N: LM head 10 x 4 = 40; per layer Q, O 2 x (2 x 2 x 4) = 32, K, V 2 x (1 x 2 x 4) = 16,
  // SwiGLU 3 x 4 x 8 = 96; the MSA layer's W_IQ and W_IK (1 + 1) x 2 x 4 = 16: 344.
  EXPECT_EQ(matmul_params(c), 344);
  // 6 N = 2064; attention 12 H d = 48 per key: dense layer 2.5 keys (120), MSA layer 1.5 (72);
  // the index scores 2 G d_I = 4 per earlier token, 2.5 of them (10).
  EXPECT_DOUBLE_EQ(train_flops_per_token(c, 4), 2064 + 120 + 72 + 10);
}

}  // namespace
}  // namespace msa
