// ModelConfig: the architecture of a Llama-style decoder whose attention layers are dense GQA or
// MSA, plus the MSA hyperparameters (DESIGN.md sections 3 and 4).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/rope.h"

namespace msa {

enum class AttentionKind { kDense, kMsa };

const char* attention_kind_name(AttentionKind kind);

// Defaults are the paper's (DESIGN.md section 4): B 128, k 16 (a 2,048-token budget), d_I 128.
struct MsaConfig {
  int block_size = 128;            // B
  int topk = 16;                   // k, including the local block
  int index_dim = 128;             // d_I (each index query head and the one shared index key head)
  double index_loss_weight = 1.0;  // lambda: L = L_LM + lambda * sum over MSA layers of L_KL
  // Not the paper's (its index branch has no RoPE): the leading dims of q^I and k^I that rotate
  // with the model's RoPE frequencies (at rotary dimension index_rotary_dim); 0: none.
  int index_rotary_dim = 0;
};

struct ModelConfig {
  int64_t vocab_size = 32000;
  int64_t d_model = 2048;
  int n_layers = 16;
  int n_heads = 16;
  int n_kv_heads = 4;
  int head_dim = 128;
  int64_t ffn_dim = 5632;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;  // frequency scaling (Llama 3.1's llama3, linear); none by default
  int rotary_dim = 0;        // partial rotary: the leading dims of each head that rotate; 0: all
  double norm_eps = 1e-5;
  bool tied_embeddings = false;
  bool qkv_bias = false;  // Qwen2
  bool qk_norm = false;   // Qwen3: RMSNorm over head_dim on q and k, before RoPE
  // One entry per layer; an empty list means all dense.
  std::vector<AttentionKind> attention;
  MsaConfig msa;

  AttentionKind layer_kind(int layer) const {
    return attention.empty() ? AttentionKind::kDense : attention[layer];
  }
  bool any_msa() const;
  int group_size() const { return n_heads / n_kv_heads; }  // r
  RopeConfig rope() const { return RopeConfig(rope_theta, rope_scaling, rotary_dim); }
  // The index branch's RoPE (meaningful when msa.index_rotary_dim > 0).
  RopeConfig index_rope() const {
    return RopeConfig(rope_theta, rope_scaling, msa.index_rotary_dim);
  }
  // Plain RoPE over the whole head (what checkpoints written before the scaled variants hold).
  bool plain_rope() const {
    return rope_scaling.type == RopeScalingType::kNone &&
           (rotary_dim == 0 || rotary_dim == head_dim);
  }

  // Checks every field; the message names the offending field (as its msa-train flag name).
  absl::Status validate() const;
  static constexpr int kMaxLayers = 65536;  // validate(): far past any model's depth

  std::string to_json() const;
  static absl::StatusOr<ModelConfig> from_json(const std::string& json_text);
};

// Parses "dense", "msa", or a comma-separated per-layer list ("dense,msa,msa,msa") for n_layers.
absl::StatusOr<std::vector<AttentionKind>> parse_attention_kinds(const std::string& spec,
                                                                 int n_layers);

}  // namespace msa
