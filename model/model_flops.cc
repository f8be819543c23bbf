#include "model/model_flops.h"

#include <algorithm>

namespace msa {

int64_t matmul_params(const ModelConfig& c) {
  const int64_t D = c.d_model, H = c.n_heads, G = c.n_kv_heads, d = c.head_dim, F = c.ffn_dim;
  int64_t n = c.vocab_size * D;  // LM head (the tied table when tied)
  for (int l = 0; l < c.n_layers; ++l) {
    n += 2 * H * d * D + 2 * G * d * D + 3 * D * F;
    if (c.layer_kind(l) == AttentionKind::kMsa) n += (G + 1) * c.msa.index_dim * D;  // W_IQ, W_IK
  }
  return n;
}

// The average over the T queries of a causal layer's attended keys: every s <= t for dense layers
// (t + 1); for MSA layers the local block's s <= t plus min(k - 1, c(t)) earlier full blocks.
double mean_attended_keys(const ModelConfig& c, AttentionKind kind, int64_t T) {
  if (kind != AttentionKind::kMsa) return (static_cast<double>(T) + 1) / 2;
  const int64_t B = c.msa.block_size, k = c.msa.topk;
  double sum = 0;
  for (int64_t block = 0; block * B < T; ++block) {
    const int64_t n = std::min(B, T - block * B);  // queries in this block
    sum += static_cast<double>(n) * (n + 1) / 2 +
           static_cast<double>(n) * static_cast<double>(std::min(k - 1, block) * B);
  }
  return sum / static_cast<double>(T);
}

double train_flops_per_token(const ModelConfig& c, int64_t T) {
  double f = 6.0 * static_cast<double>(matmul_params(c));
  for (int l = 0; l < c.n_layers; ++l) {
    const AttentionKind kind = c.layer_kind(l);
    // QK^T and PV: 2 d FLOPs each per head and key forward, twice that backward.
    f += 12.0 * c.n_heads * c.head_dim * mean_attended_keys(c, kind, T);
    // The indexer scores every earlier token once per KV group (forward only).
    if (kind == AttentionKind::kMsa)
      f += 2.0 * c.n_kv_heads * c.msa.index_dim * mean_attended_keys(c, AttentionKind::kDense, T);
  }
  return f;
}

}  // namespace msa
