#include "model/model_config.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace msa {

const char* attention_kind_name(AttentionKind kind) {
  return kind == AttentionKind::kMsa ? "msa" : "dense";
}

bool ModelConfig::any_msa() const {
  for (AttentionKind k : attention)
    if (k == AttentionKind::kMsa) return true;
  return false;
}

absl::Status ModelConfig::validate() const {
  auto bad = [](const char* field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("invalid --%s: %s", field, why));
  };
  if (vocab_size < 2) return bad("vocab_size", absl::StrFormat("%d is < 2", vocab_size));
  if (d_model < 1) return bad("d_model", absl::StrFormat("%d is < 1", d_model));
  if (n_layers < 1) return bad("n_layers", absl::StrFormat("%d is < 1", n_layers));
  // Per-layer lists (the attention kinds, the config JSON, the parameter specs) are built before
  // the memory check could refuse a model this deep: 2^31 - 1 layers hung msa-train for minutes.
  if (n_layers > kMaxLayers)
    return bad("n_layers", absl::StrFormat("%d is above %d", n_layers, kMaxLayers));
  if (n_heads < 1) return bad("n_heads", absl::StrFormat("%d is < 1", n_heads));
  if (n_kv_heads < 1) return bad("n_kv_heads", absl::StrFormat("%d is < 1", n_kv_heads));
  if (n_heads % n_kv_heads != 0)
    return bad("n_kv_heads", absl::StrFormat("n_heads (%d) is not divisible by n_kv_heads (%d)",
                                             n_heads, n_kv_heads));
  if (head_dim < 2 || head_dim % 2 != 0)
    return bad("head_dim", absl::StrFormat("%d must be even and >= 2 (RoPE rotates pairs)", head_dim));
  if (ffn_dim < 1) return bad("ffn_dim", absl::StrFormat("%d is < 1", ffn_dim));
  if (!(rope_theta > 0)) return bad("rope_theta", absl::StrFormat("%g must be > 0", rope_theta));
  if (absl::Status s = validate_rope(rope(), head_dim); !s.ok())
    return absl::InvalidArgumentError("invalid --" + std::string(s.message()));
  if (!(norm_eps > 0)) return bad("norm_eps", absl::StrFormat("%g must be > 0", norm_eps));
  if (!attention.empty() && static_cast<int>(attention.size()) != n_layers)
    return bad("attention", absl::StrFormat("lists %d layers but n_layers is %d", attention.size(),
                                            n_layers));
  if (any_msa()) {
    if (msa.block_size < 1) return bad("msa_block_size", absl::StrFormat("%d is < 1", msa.block_size));
    if (msa.topk < 1) return bad("msa_topk", absl::StrFormat("%d is < 1 (the local block counts)", msa.topk));
    if (msa.index_dim < 1) return bad("msa_index_dim", absl::StrFormat("%d is < 1", msa.index_dim));
    if (msa.index_rotary_dim != 0) {
      if (absl::Status s = validate_rope(index_rope(), msa.index_dim); !s.ok())
        return bad("msa_index_rotary_dim",
                   absl::StrFormat("%d with msa_index_dim %d: %s", msa.index_rotary_dim,
                                   msa.index_dim, s.message()));
    }
    if (!(msa.index_loss_weight >= 0))
      return bad("msa_index_loss_weight", absl::StrFormat("%g must be >= 0", msa.index_loss_weight));
  }
  return absl::OkStatus();
}

std::string ModelConfig::to_json() const {
  nlohmann::json j;
  j["vocab_size"] = vocab_size;
  j["d_model"] = d_model;
  j["n_layers"] = n_layers;
  j["n_heads"] = n_heads;
  j["n_kv_heads"] = n_kv_heads;
  j["head_dim"] = head_dim;
  j["ffn_dim"] = ffn_dim;
  j["rope_theta"] = rope_theta;
  // Written only when they differ from plain RoPE, so such configs read as before everywhere.
  if (rope_scaling.type != RopeScalingType::kNone) {
    nlohmann::json rs = {{"type", rope_scaling_type_name(rope_scaling.type)},
                         {"factor", rope_scaling.factor}};
    if (rope_scaling.type == RopeScalingType::kLlama3) {
      rs["low_freq_factor"] = rope_scaling.low_freq_factor;
      rs["high_freq_factor"] = rope_scaling.high_freq_factor;
      rs["original_max_position"] = rope_scaling.original_max_position;
    }
    j["rope_scaling"] = rs;
  }
  if (rotary_dim != 0) j["rotary_dim"] = rotary_dim;
  j["norm_eps"] = norm_eps;
  j["tied_embeddings"] = tied_embeddings;
  j["qkv_bias"] = qkv_bias;
  j["qk_norm"] = qk_norm;
  std::vector<std::string> kinds;
  for (int l = 0; l < n_layers; ++l) kinds.push_back(attention_kind_name(layer_kind(l)));
  j["attention"] = kinds;
  j["msa"] = {{"block_size", msa.block_size},
              {"topk", msa.topk},
              {"index_dim", msa.index_dim},
              {"index_loss_weight", msa.index_loss_weight}};
  // Written only when used: a paper-MSA checkpoint's JSON is what it was before the option.
  if (msa.index_rotary_dim != 0) j["msa"]["index_rotary_dim"] = msa.index_rotary_dim;
  return j.dump(2);
}

absl::StatusOr<ModelConfig> ModelConfig::from_json(const std::string& json_text) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError("model config: not a JSON object");
  ModelConfig c;
  try {
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.d_model = j.at("d_model").get<int64_t>();
    c.n_layers = j.at("n_layers").get<int>();
    c.n_heads = j.at("n_heads").get<int>();
    c.n_kv_heads = j.at("n_kv_heads").get<int>();
    c.head_dim = j.at("head_dim").get<int>();
    c.ffn_dim = j.at("ffn_dim").get<int64_t>();
    c.rope_theta = j.at("rope_theta").get<double>();
    // Absent in checkpoints written before the scaled / partial variants: plain RoPE, whole head.
    if (j.contains("rope_scaling")) {
      const auto& rs = j.at("rope_scaling");
      const std::string type = rs.at("type").get<std::string>();
      if (type == "linear") {
        c.rope_scaling.type = RopeScalingType::kLinear;
      } else if (type == "llama3") {
        c.rope_scaling.type = RopeScalingType::kLlama3;
        c.rope_scaling.low_freq_factor = rs.at("low_freq_factor").get<double>();
        c.rope_scaling.high_freq_factor = rs.at("high_freq_factor").get<double>();
        c.rope_scaling.original_max_position = rs.at("original_max_position").get<double>();
      } else if (type != "default") {
        return absl::InvalidArgumentError("model config: rope_scaling: unknown type '" + type +
                                          "'");
      }
      if (c.rope_scaling.type != RopeScalingType::kNone)
        c.rope_scaling.factor = rs.at("factor").get<double>();
    }
    if (j.contains("rotary_dim")) c.rotary_dim = j.at("rotary_dim").get<int>();
    c.norm_eps = j.at("norm_eps").get<double>();
    c.tied_embeddings = j.at("tied_embeddings").get<bool>();
    c.qkv_bias = j.at("qkv_bias").get<bool>();
    c.qk_norm = j.at("qk_norm").get<bool>();
    c.attention.clear();
    for (const auto& k : j.at("attention")) {
      std::string s = k.get<std::string>();
      if (s == "msa") c.attention.push_back(AttentionKind::kMsa);
      else if (s == "dense") c.attention.push_back(AttentionKind::kDense);
      else return absl::InvalidArgumentError("model config: attention: unknown kind '" + s + "'");
    }
    const auto& m = j.at("msa");
    c.msa.block_size = m.at("block_size").get<int>();
    c.msa.topk = m.at("topk").get<int>();
    c.msa.index_dim = m.at("index_dim").get<int>();
    c.msa.index_loss_weight = m.at("index_loss_weight").get<double>();
    if (m.contains("index_rotary_dim"))
      c.msa.index_rotary_dim = m.at("index_rotary_dim").get<int>();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(std::string("model config: ") + e.what());
  }
  absl::Status s = c.validate();
  if (!s.ok()) return absl::InvalidArgumentError("model config: " + std::string(s.message()));
  return c;
}

absl::StatusOr<std::vector<AttentionKind>> parse_attention_kinds(const std::string& spec,
                                                                 int n_layers) {
  std::vector<AttentionKind> kinds;
  std::vector<std::string> parts = absl::StrSplit(spec, ',');
  for (std::string part : parts) {
    absl::string_view p = absl::StripAsciiWhitespace(part);
    if (p == "msa") kinds.push_back(AttentionKind::kMsa);
    else if (p == "dense") kinds.push_back(AttentionKind::kDense);
    else
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --attention: '%s' is not dense or msa (use one kind or a per-layer list)", p));
  }
  if (kinds.size() == 1) return std::vector<AttentionKind>(n_layers, kinds[0]);
  if (static_cast<int>(kinds.size()) != n_layers)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --attention: lists %d layers but --n_layers is %d", kinds.size(), n_layers));
  return kinds;
}

}  // namespace msa
