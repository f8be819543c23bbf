#include "launch/bench/model_preset.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "launch/bench/flags.h"

namespace msa::bench {

ModelConfig preset_model(const std::string& name, bool all_msa) {
  ModelConfig c;
  if (name == "1b") {
    c.vocab_size = 32000;
    c.d_model = 2048;
    c.n_layers = 16;
    c.n_heads = 16;
    c.n_kv_heads = 4;
    c.head_dim = 128;
    c.ffn_dim = 5632;
  } else if (name == "small") {
    c.vocab_size = 32000;
    c.d_model = 512;
    c.n_layers = 4;
    c.n_heads = 8;
    c.n_kv_heads = 2;
    c.head_dim = 64;
    c.ffn_dim = 1408;
  } else {
    std::fprintf(stderr, "msa-bench: unknown --model '%s' (use 1b or small)\n", name.c_str());
    std::exit(1);
  }
  if (absl::GetFlag(FLAGS_layers) > 0) c.n_layers = absl::GetFlag(FLAGS_layers);
  c.msa.block_size = absl::GetFlag(FLAGS_block_size);
  c.msa.topk = absl::GetFlag(FLAGS_topk);
  c.msa.index_dim = absl::GetFlag(FLAGS_index_dim);
  if (all_msa) c.attention.assign(c.n_layers, AttentionKind::kMsa);
  return c;
}

int64_t matmul_params(const ModelConfig& c) {
  const int64_t D = c.d_model, H = c.n_heads, G = c.n_kv_heads, d = c.head_dim, F = c.ffn_dim;
  int64_t n = c.vocab_size * D;  // LM head (the tied table when tied)
  for (int l = 0; l < c.n_layers; ++l) {
    n += 2 * H * d * D + 2 * G * d * D + 3 * D * F;
    if (c.layer_kind(l) == AttentionKind::kMsa) n += (G + 1) * c.msa.index_dim * D;  // W_IQ, W_IK
  }
  return n;
}

double train_flops_per_token(const ModelConfig& c, int64_t T) {
  double f = 6.0 * static_cast<double>(matmul_params(c));
  for (int l = 0; l < c.n_layers; ++l) {
    double keys = static_cast<double>(T) / 2;
    if (c.layer_kind(l) == AttentionKind::kMsa) {
      keys = std::min(keys, static_cast<double>(c.msa.topk) * c.msa.block_size);
      // The indexer scores every earlier token once per KV group (forward only).
      f += 2.0 * c.n_kv_heads * c.msa.index_dim * static_cast<double>(T) / 2;
    }
    f += 6.0 * c.n_heads * c.head_dim * keys;
  }
  return f;
}

}  // namespace msa::bench
