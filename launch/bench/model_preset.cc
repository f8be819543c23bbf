#include "launch/bench/model_preset.h"

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

}  // namespace msa::bench
