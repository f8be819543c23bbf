#include "launch/hf_convert.h"

#include <sys/stat.h>

#include <cerrno>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "core/status.h"
#include "model/parameters.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

absl::StatusOr<std::string> read_text(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrFormat("%s: cannot read", path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Matches `name` against a pattern with one "{l}" and returns the layer (-1: no match, or no
// "{l}" and an exact match gives 0).
int match_layer(const std::string& pattern, const std::string& name) {
  const size_t at = pattern.find("{l}");
  if (at == std::string::npos) return pattern == name ? 0 : -1;
  const std::string prefix = pattern.substr(0, at), suffix = pattern.substr(at + 3);
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return -1;
  const std::string digits =
      name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoi(digits);
}

std::string with_layer(const std::string& pattern, int layer) {
  return absl::StrReplaceAll(pattern, {{"{l}", std::to_string(layer)}});
}

}  // namespace

const std::vector<HfNameMapping>& hf_name_table() {
  static const std::vector<HfNameMapping> table = {
      {"model.embed_tokens.weight", "embed.weight"},
      {"model.layers.{l}.input_layernorm.weight", "layers.{l}.attn_norm.weight"},
      {"model.layers.{l}.self_attn.q_proj.weight", "layers.{l}.attn.wq.weight"},
      {"model.layers.{l}.self_attn.q_proj.bias", "layers.{l}.attn.wq.bias"},
      {"model.layers.{l}.self_attn.k_proj.weight", "layers.{l}.attn.wk.weight"},
      {"model.layers.{l}.self_attn.k_proj.bias", "layers.{l}.attn.wk.bias"},
      {"model.layers.{l}.self_attn.v_proj.weight", "layers.{l}.attn.wv.weight"},
      {"model.layers.{l}.self_attn.v_proj.bias", "layers.{l}.attn.wv.bias"},
      {"model.layers.{l}.self_attn.q_norm.weight", "layers.{l}.attn.q_norm.weight"},
      {"model.layers.{l}.self_attn.k_norm.weight", "layers.{l}.attn.k_norm.weight"},
      {"model.layers.{l}.self_attn.o_proj.weight", "layers.{l}.attn.wo.weight"},
      {"model.layers.{l}.post_attention_layernorm.weight", "layers.{l}.mlp_norm.weight"},
      {"model.layers.{l}.mlp.gate_proj.weight", "layers.{l}.mlp.w_gate.weight"},
      {"model.layers.{l}.mlp.up_proj.weight", "layers.{l}.mlp.w_up.weight"},
      {"model.layers.{l}.mlp.down_proj.weight", "layers.{l}.mlp.w_down.weight"},
      {"model.norm.weight", "final_norm.weight"},
      {"lm_head.weight", "lm_head.weight"},
  };
  return table;
}

std::string hf_to_our_name(const std::string& hf_name) {
  for (const HfNameMapping& m : hf_name_table()) {
    const int l = match_layer(m.hf, hf_name);
    if (l >= 0) return with_layer(m.ours, l);
  }
  return "";
}

std::string our_to_hf_name(const std::string& our_name) {
  for (const HfNameMapping& m : hf_name_table()) {
    const int l = match_layer(m.ours, our_name);
    if (l >= 0) return with_layer(m.hf, l);
  }
  return "";
}

absl::StatusOr<HfCheckpoint> parse_hf_config(const std::string& text, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: not valid JSON (%s)", path, e.what()));
  }
  auto field_error = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' %s", path, field, why));
  };
  HfCheckpoint ck;
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty())
    return field_error("architectures", "is missing");
  ck.architecture = j["architectures"][0].get<std::string>();
  static const std::set<std::string> kSupported = {"LlamaForCausalLM", "MistralForCausalLM",
                                                   "Qwen2ForCausalLM", "Qwen3ForCausalLM"};
  if (!kSupported.count(ck.architecture))
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: unsupported architecture '%s' (supported: LlamaForCausalLM, MistralForCausalLM, "
        "Qwen2ForCausalLM, Qwen3ForCausalLM)",
        path, ck.architecture));
  auto get_int = [&](const char* name, int64_t& out) -> absl::Status {
    if (!j.contains(name) || !j[name].is_number_integer())
      return field_error(name, "is missing or not an integer");
    out = j[name].get<int64_t>();
    return absl::OkStatus();
  };
  ModelConfig& c = ck.config;
  int64_t v = 0;
  MSA_RETURN_IF_ERROR(get_int("vocab_size", c.vocab_size));
  MSA_RETURN_IF_ERROR(get_int("hidden_size", c.d_model));
  MSA_RETURN_IF_ERROR(get_int("num_hidden_layers", v));
  c.n_layers = static_cast<int>(v);
  MSA_RETURN_IF_ERROR(get_int("num_attention_heads", v));
  c.n_heads = static_cast<int>(v);
  c.n_kv_heads = c.n_heads;
  if (j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()) {
    MSA_RETURN_IF_ERROR(get_int("num_key_value_heads", v));
    c.n_kv_heads = static_cast<int>(v);
  }
  MSA_RETURN_IF_ERROR(get_int("intermediate_size", c.ffn_dim));
  c.head_dim = static_cast<int>(c.d_model / c.n_heads);
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    MSA_RETURN_IF_ERROR(get_int("head_dim", v));
    c.head_dim = static_cast<int>(v);
  }
  c.rope_theta = j.value("rope_theta", 10000.0);
  c.norm_eps = j.value("rms_norm_eps", 1e-6);
  c.tied_embeddings = j.value("tie_word_embeddings", false);
  c.qkv_bias = ck.architecture == "Qwen2ForCausalLM";
  c.qk_norm = ck.architecture == "Qwen3ForCausalLM";
  const std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu")
    return field_error("hidden_act", "is '" + act + "' (only silu / SwiGLU is supported)");
  if (j.value("attention_bias", false))
    return field_error("attention_bias", "is true (an o_proj bias is not supported)");
  if (j.value("mlp_bias", false))
    return field_error("mlp_bias", "is true (MLP biases are not supported)");
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const auto& rs = j["rope_scaling"];
    const std::string type = rs.value("rope_type", rs.value("type", std::string("?")));
    if (type != "default")
      return field_error("rope_scaling", "has rope_type '" + type +
                                             "' (only unscaled RoPE, 'default', is supported)");
  }
  if (j.contains("sliding_window") && !j["sliding_window"].is_null() &&
      j.value("use_sliding_window", ck.architecture == "MistralForCausalLM"))
    return field_error("sliding_window", "is set (sliding-window attention is not supported)");
  const std::string dtype = j.value("torch_dtype", std::string("bfloat16"));
  ck.dtype = dtype == "float32"   ? StDtype::kF32
             : dtype == "float16" ? StDtype::kF16
                                  : StDtype::kBF16;
  absl::Status valid = c.validate();
  if (!valid.ok()) return annotate(valid, path);
  return ck;
}

absl::StatusOr<HfCheckpoint> read_hf_checkpoint(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  MSA_ASSIGN_OR_RETURN(std::string config_text, read_text(config_path));
  MSA_ASSIGN_OR_RETURN(HfCheckpoint ck, parse_hf_config(config_text, config_path));

  // The shard files: model.safetensors, or those named by model.safetensors.index.json.
  std::vector<std::string> files;
  const std::string index_path = dir + "/model.safetensors.index.json";
  struct stat st;
  if (::stat(index_path.c_str(), &st) == 0) {
    MSA_ASSIGN_OR_RETURN(std::string index_text, read_text(index_path));
    try {
      const nlohmann::json index = nlohmann::json::parse(index_text);
      std::set<std::string> names;
      for (auto it = index.at("weight_map").begin(); it != index.at("weight_map").end(); ++it)
        names.insert(it.value().get<std::string>());
      for (const std::string& n : names) files.push_back(dir + "/" + n);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: malformed index (%s)", index_path, e.what()));
    }
  } else {
    files.push_back(dir + "/model.safetensors");
  }

  const std::vector<ParamSpec> specs = model_param_specs(ck.config);
  std::map<std::string, Shape> expected;
  for (const ParamSpec& s : specs) expected[s.name] = s.shape;
  bool first = true;
  for (const std::string& file : files) {
    MSA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> st_file, SafetensorsFile::open(file));
    for (const auto& [hf_name, info] : st_file->tensors()) {
      if (hf_name.find("rotary_emb.inv_freq") != std::string::npos) continue;  // derived buffer
      const std::string ours = hf_to_our_name(hf_name);
      if (ours.empty())
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: tensor '%s' has no counterpart in msa-train (see docs/convert.md)",
                            file, hf_name));
      if (ours == "lm_head.weight" && ck.config.tied_embeddings) continue;  // same as embed
      auto it = expected.find(ours);
      if (it == expected.end())
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: tensor '%s' does not fit the config (layer out of range, or a bias/norm the "
            "architecture does not have)",
            file, hf_name));
      if (info.shape != it->second)
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: tensor '%s' has shape %s but config.json implies %s", file,
                            hf_name, shape_string(info.shape), shape_string(it->second)));
      if (first) ck.dtype = info.dtype;
      first = false;
      MSA_ASSIGN_OR_RETURN(ck.params[ours], st_file->read_f32(hf_name));
    }
  }
  for (const ParamSpec& s : specs)
    if (!ck.params.count(s.name))
      return absl::InvalidArgumentError(absl::StrFormat("%s: missing tensor '%s' (msa-train's %s)",
                                                        dir, our_to_hf_name(s.name), s.name));
  return ck;
}

absl::Status write_hf_checkpoint(const std::string& dir, const std::string& architecture,
                                 const ModelConfig& c, const std::map<std::string, Tensor>& params,
                                 StDtype dtype) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --export_hf: cannot create '%s'", dir));
  ModelConfig dense = c;
  dense.attention.clear();
  std::vector<StTensorOut> tensors;
  for (const ParamSpec& s : model_param_specs(dense)) {
    auto it = params.find(s.name);
    if (it == params.end())
      return absl::InvalidArgumentError(absl::StrFormat("export: no parameter %s", s.name));
    tensors.push_back({our_to_hf_name(s.name), dtype, s.shape, encode_f32(it->second, dtype)});
  }
  MSA_RETURN_IF_ERROR(write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}}));
  nlohmann::ordered_json j;
  j["architectures"] = {architecture};
  j["model_type"] = architecture == "Qwen2ForCausalLM"     ? "qwen2"
                    : architecture == "Qwen3ForCausalLM"   ? "qwen3"
                    : architecture == "MistralForCausalLM" ? "mistral"
                                                           : "llama";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.d_model;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["intermediate_size"] = c.ffn_dim;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.norm_eps;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["torch_dtype"] = dtype == StDtype::kF32   ? "float32"
                     : dtype == StDtype::kF16 ? "float16"
                                              : "bfloat16";
  std::ofstream f(dir + "/config.json");
  f << j.dump(2) << "\n";
  if (!f) return absl::InternalError(absl::StrFormat("%s/config.json: write failed", dir));
  return absl::OkStatus();
}

}  // namespace msa
