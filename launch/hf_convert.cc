#include "launch/hf_convert.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "core/file_publish.h"
#include "core/status.h"
#include "launch/available_memory.h"
#include "launch/hf_rope_config.h"
#include "model/parameters.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

absl::StatusOr<std::string> read_text(const std::string& path) {
  // A FIFO would block the open; a directory would read as empty.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return absl::NotFoundError(absl::StrFormat("%s: cannot read: no such file", path));
  if (!S_ISREG(st.st_mode))
    return absl::NotFoundError(absl::StrFormat("%s: cannot read: not a regular file", path));
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
  if (digits.empty() || digits.size() > 9 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return -1;
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
  // Every value is checked for its JSON type and its range before it is used: a bad config.json
  // is an error naming the file and the field, never a signal, an exception or a silent wrap.
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return absl::InvalidArgumentError(absl::StrFormat("%s: not valid JSON", path));
  if (!j.is_object())
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a JSON object (it is %s)", path, j.type_name()));
  auto field_error = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: field '%s' %s", path, field, why));
  };
  // The field's value, or nullptr when it is absent or null (then the default applies).
  auto find = [&](const nlohmann::json& obj, const char* name) -> const nlohmann::json* {
    auto it = obj.find(name);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  };
  auto describe = [](const nlohmann::json& v) {
    std::string d = v.dump();
    if (d.size() > 40) d = d.substr(0, 37) + "...";
    return absl::StrFormat("%s (%s)", d, v.type_name());
  };
  // An integer in [lo, hi]; floats, strings, booleans, arrays and objects are refused.
  auto get_int = [&](const char* name, int64_t lo, int64_t hi, bool required,
                     int64_t& out) -> absl::Status {
    const nlohmann::json* v = find(j, name);
    if (v == nullptr) return required ? field_error(name, "is missing") : absl::OkStatus();
    if (!v->is_number_integer())
      return field_error(name, "is " + describe(*v) + ", not an integer");
    bool in_range;
    int64_t value = 0;
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      in_range = u <= static_cast<uint64_t>(hi);
      if (in_range) value = static_cast<int64_t>(u);
    } else {
      value = v->get<int64_t>();
      in_range = value <= hi;
    }
    if (!in_range || value < lo)
      return field_error(name, absl::StrFormat("is %s, outside [%d, %d]", v->dump(), lo, hi));
    out = value;
    return absl::OkStatus();
  };
  // A finite number > 0 (integers are accepted).
  auto get_positive = [&](const char* name, double fallback, double& out) -> absl::Status {
    const nlohmann::json* v = find(j, name);
    if (v == nullptr) {
      out = fallback;
      return absl::OkStatus();
    }
    if (!v->is_number()) return field_error(name, "is " + describe(*v) + ", not a number");
    out = v->get<double>();
    if (!std::isfinite(out) || !(out > 0))
      return field_error(name, absl::StrFormat("is %g, must be finite and > 0", out));
    return absl::OkStatus();
  };
  auto get_bool = [&](const nlohmann::json& obj, const char* name, bool fallback,
                      bool& out) -> absl::Status {
    const nlohmann::json* v = find(obj, name);
    out = fallback;
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return field_error(name, "is " + describe(*v) + ", not true or false");
    out = v->get<bool>();
    return absl::OkStatus();
  };
  // `label`: the name in messages (a nested field is named with its parent).
  auto get_string = [&](const nlohmann::json& obj, const char* name, const std::string& fallback,
                        std::string& out, const std::string& label = "") -> absl::Status {
    const nlohmann::json* v = find(obj, name);
    out = fallback;
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string())
      return field_error(label.empty() ? name : label, "is " + describe(*v) + ", not a string");
    out = v->get<std::string>();
    return absl::OkStatus();
  };

  HfCheckpoint ck;
  const nlohmann::json* archs = find(j, "architectures");
  if (archs == nullptr || !archs->is_array() || archs->empty() || !(*archs)[0].is_string())
    return field_error("architectures", "is missing or not a list of names");
  ck.architecture = (*archs)[0].get<std::string>();
  static const std::set<std::string> kSupported = {"LlamaForCausalLM", "MistralForCausalLM",
                                                   "Qwen2ForCausalLM", "Qwen3ForCausalLM"};
  if (!kSupported.count(ck.architecture))
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: unsupported architecture '%s' (supported: LlamaForCausalLM, MistralForCausalLM, "
        "Qwen2ForCausalLM, Qwen3ForCausalLM)",
        path, ck.architecture));

  // Ranges: token ids are int32; the other limits lie far above any published model and keep
  // every product below (products of the int fields, the parameter count) checkable.
  constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();
  ModelConfig& c = ck.config;
  int64_t layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  MSA_RETURN_IF_ERROR(get_int("vocab_size", 2, kMaxInt32, true, c.vocab_size));
  MSA_RETURN_IF_ERROR(get_int("hidden_size", 1, int64_t{1} << 20, true, c.d_model));
  MSA_RETURN_IF_ERROR(get_int("num_hidden_layers", 1, int64_t{1} << 14, true, layers));
  MSA_RETURN_IF_ERROR(get_int("num_attention_heads", 1, int64_t{1} << 16, true, heads));
  // Absent fields take the defaults of the architecture's transformers config class: Llama's
  // key/value heads are its query heads, Mistral's 8, Qwen2's and Qwen3's 32; Qwen3's head_dim
  // is 128, the others' hidden_size / heads (heads >= 1 here).
  const bool is_qwen =
      ck.architecture == "Qwen2ForCausalLM" || ck.architecture == "Qwen3ForCausalLM";
  // An explicit null is transformers' None, which every one of these classes reads as the query
  // heads (and head_dim as hidden_size / heads).
  const bool kv_heads_null =
      j.contains("num_key_value_heads") && j["num_key_value_heads"].is_null();
  kv_heads = kv_heads_null                             ? heads
             : ck.architecture == "MistralForCausalLM" ? 8
             : is_qwen                                 ? 32
                                                       : heads;
  const bool kv_heads_given = find(j, "num_key_value_heads") != nullptr || kv_heads_null;
  MSA_RETURN_IF_ERROR(get_int("num_key_value_heads", 1, int64_t{1} << 16, false, kv_heads));
  MSA_RETURN_IF_ERROR(get_int("intermediate_size", 1, int64_t{1} << 22, true, c.ffn_dim));
  const bool head_dim_null = j.contains("head_dim") && j["head_dim"].is_null();
  head_dim = ck.architecture == "Qwen3ForCausalLM" && !head_dim_null ? 128 : c.d_model / heads;
  MSA_RETURN_IF_ERROR(get_int("head_dim", 1, int64_t{1} << 16, false, head_dim));
  if (heads % kv_heads != 0)
    return field_error("num_key_value_heads",
                       absl::StrFormat("is %s, which does not divide num_attention_heads (%d)",
                                       kv_heads_given ? absl::StrCat(kv_heads)
                                                      : absl::StrFormat("absent (%s's default: %d)",
                                                                        ck.architecture, kv_heads),
                                       heads));
  if (head_dim < 2 || head_dim % 2 != 0)
    return field_error(find(j, "head_dim") != nullptr ? "head_dim" : "num_attention_heads",
                       absl::StrFormat("gives head_dim %d (hidden_size %d / %d heads), which "
                                       "must be even and >= 2 (RoPE rotates pairs)",
                                       head_dim, c.d_model, heads));
  if (heads * head_dim > kMaxInt32)
    return field_error(
        "num_attention_heads",
        absl::StrFormat("times head_dim (%d x %d) exceeds 2^31 - 1", heads, head_dim));
  c.n_layers = static_cast<int>(layers);
  c.n_heads = static_cast<int>(heads);
  c.n_kv_heads = static_cast<int>(kv_heads);
  c.head_dim = static_cast<int>(head_dim);
  // None of the supported architectures' transformers implementations applies
  // partial_rotary_factor (they rotate the whole head), so it is refused for all of them.
  MSA_ASSIGN_OR_RETURN(const RopeConfig rope,
                       parse_hf_rope(j, head_dim, /*partial_rotary=*/false, path));
  c.rope_theta = rope.theta;
  c.rope_scaling = rope.scaling;
  c.rotary_dim = static_cast<int>(rope.rotary_dim);
  MSA_RETURN_IF_ERROR(get_positive("rms_norm_eps", 1e-6, c.norm_eps));
  MSA_RETURN_IF_ERROR(get_bool(j, "tie_word_embeddings", false, c.tied_embeddings));
  c.qkv_bias = ck.architecture == "Qwen2ForCausalLM";
  c.qk_norm = ck.architecture == "Qwen3ForCausalLM";
  std::string act;
  MSA_RETURN_IF_ERROR(get_string(j, "hidden_act", "silu", act));
  if (act != "silu")
    return field_error("hidden_act", "is '" + act + "' (only silu / SwiGLU is supported)");
  bool flag = false;
  MSA_RETURN_IF_ERROR(get_bool(j, "attention_bias", false, flag));
  if (flag) return field_error("attention_bias", "is true (an o_proj bias is not supported)");
  MSA_RETURN_IF_ERROR(get_bool(j, "mlp_bias", false, flag));
  if (flag) return field_error("mlp_bias", "is true (MLP biases are not supported)");
  if (ck.architecture == "MistralForCausalLM") {
    // transformers' MistralConfig has no use_sliding_window, and an absent sliding_window is its
    // default, 4096: only an explicit null is full attention.
    const auto it = j.find("sliding_window");
    if (it == j.end())
      return field_error("sliding_window",
                         "is absent, which transformers reads as Mistral's default 4096 "
                         "(sliding-window attention is not supported; a model with full "
                         "attention says \"sliding_window\": null)");
    if (!it->is_null())
      return field_error("sliding_window", "is set (sliding-window attention is not supported)");
  } else {
    // Qwen2 / Qwen3: with use_sliding_window, the layers from max_window_layers on (28 when
    // absent) attend within sliding_window (4096 when absent, transformers' default); only an
    // explicit null window, or no layer at or past max_window_layers, is full attention.
    bool sliding = false;
    MSA_RETURN_IF_ERROR(get_bool(j, "use_sliding_window", false, sliding));
    const auto window = j.find("sliding_window");
    if (sliding && !(window != j.end() && window->is_null())) {
      int64_t full_layers = 28;
      MSA_RETURN_IF_ERROR(get_int("max_window_layers", 0, int64_t{1} << 14, false, full_layers));
      if (full_layers < layers)
        return field_error(
            "use_sliding_window",
            absl::StrFormat(
                "is true: layers %d.. attend within a sliding window (sliding_window "
                "%s, max_window_layers %d; sliding-window attention is not supported)",
                full_layers,
                window == j.end() ? "absent, transformers' default 4096" : window->dump(),
                full_layers));
    }
  }
  // transformers 5 lists each layer's attention; sliding layers are not supported.
  if (const nlohmann::json* types = find(j, "layer_types")) {
    if (!types->is_array())
      return field_error("layer_types", "is " + describe(*types) + ", not a list");
    for (const nlohmann::json& t : *types)
      if (!t.is_string() || t.get<std::string>() != "full_attention")
        return field_error("layer_types",
                           "has " + describe(t) + " (only full_attention layers are supported)");
  }
  {
    nlohmann::ordered_json kept = nlohmann::ordered_json::object();
    for (const char* name :
         {"bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"})
      if (const auto it = j.find(name); it != j.end()) kept[name] = *it;
    if (!kept.empty()) ck.generation_fields = kept.dump();
  }
  std::string dtype;
  MSA_RETURN_IF_ERROR(get_string(j, "torch_dtype", "bfloat16", dtype));
  ck.dtype = dtype == "float32"   ? StDtype::kF32
             : dtype == "float16" ? StDtype::kF16
                                  : StDtype::kBF16;
  absl::Status valid = c.validate();
  if (!valid.ok()) return annotate(valid, path);
  // The parameter count, every product checked: a config whose tensors cannot be addressed is an
  // error here, not an overflow later.
  int64_t total = 0;
  for (const ParamSpec& s : model_param_specs(c)) {
    int64_t numel = 1;
    for (int64_t dim : s.shape)
      if (__builtin_mul_overflow(numel, dim, &numel))
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: the sizes give tensor %s a shape %s whose element count overflows 64 bits", path,
            our_to_hf_name(s.name), shape_string(s.shape)));
    int64_t bytes = 0;
    if (__builtin_add_overflow(total, numel, &total) ||
        __builtin_mul_overflow(total, int64_t{4}, &bytes))
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: the sizes (vocab_size %d, hidden_size %d, num_hidden_layers %d, "
                          "intermediate_size %d) give a parameter count that overflows 64 bits",
                          path, c.vocab_size, c.d_model, c.n_layers, c.ffn_dim));
  }
  return ck;
}

absl::StatusOr<HfCheckpoint> read_hf_checkpoint(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  MSA_ASSIGN_OR_RETURN(std::string config_text, read_text(config_path));
  MSA_ASSIGN_OR_RETURN(HfCheckpoint ck, parse_hf_config(config_text, config_path));

  // The shard files: model.safetensors, or those named by model.safetensors.index.json.
  std::vector<std::string> files;
  const std::string index_path = dir + "/model.safetensors.index.json";
  const std::string single_path = dir + "/model.safetensors";
  // The index's file for each tensor name (a sharded checkpoint); empty for a single file.
  std::map<std::string, std::string> weight_map;
  struct stat st;
  if (::stat(index_path.c_str(), &st) == 0) {
    // transformers takes model.safetensors when both are there; a reader that took the index
    // would convert other weights than the ones the model runs with.
    if (::stat(single_path.c_str(), &st) == 0)
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: holds both model.safetensors and model.safetensors.index.json (a single file and "
          "a sharded set), so which weights are the model's is ambiguous (transformers loads "
          "model.safetensors): remove the one that is stale",
          dir));
    MSA_ASSIGN_OR_RETURN(std::string index_text, read_text(index_path));
    try {
      const nlohmann::json index = nlohmann::json::parse(index_text);
      std::set<std::string> names;
      for (auto it = index.at("weight_map").begin(); it != index.at("weight_map").end(); ++it) {
        const std::string file = it.value().get<std::string>();
        weight_map[it.key()] = file;
        names.insert(file);
      }
      for (const std::string& n : names) {
        // A shard is a file of this directory: a path would read weights from elsewhere.
        if (n.empty() || n.find('/') != std::string::npos || n == "." || n == "..")
          return absl::InvalidArgumentError(
              absl::StrFormat("%s: weight_map names the shard '%s', which is not a file name in %s",
                              index_path, n, dir));
        if (::stat((dir + "/" + n).c_str(), &st) != 0)
          return absl::NotFoundError(
              absl::StrFormat("%s names the shard %s, which is not there", index_path, n));
        files.push_back(dir + "/" + n);
      }
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: malformed index (%s)", index_path, e.what()));
    }
  } else {
    files.push_back(single_path);
  }

  const std::vector<ParamSpec> specs = model_param_specs(ck.config);
  std::map<std::string, Shape> expected;
  double f32_bytes = 0;
  for (const ParamSpec& s : specs) {
    expected[s.name] = s.shape;
    f32_bytes += 4.0 * static_cast<double>(shape_numel(s.shape));
  }
  // Every weight is held in f32 until the checkpoint is written: refused up front rather than
  // killed by the OOM killer after reading most shards.
  if (const std::optional<double> free = host_available_bytes(); free && f32_bytes > *free)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: the model's weights take %.1f GiB in f32, which msa-convert holds in host memory "
        "until it writes them, more than the %.1f GiB available",
        config_path, f32_bytes / 1073741824.0, *free / 1073741824.0));
  std::set<std::string> read_names;  // "<shard>/<tensor>" of every tensor read
  bool first = true;
  std::map<std::string, std::string> source;  // our name -> "file: tensor" it was read from
  for (const std::string& file : files) {
    MSA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> st_file, SafetensorsFile::open(file));
    const std::string base = file.substr(dir.size() + 1);
    for (const auto& [hf_name, info] : st_file->tensors()) {
      read_names.insert(base + "/" + hf_name);
      if (hf_name.find("rotary_emb.inv_freq") != std::string::npos) continue;  // derived buffer
      if (!weight_map.empty()) {
        // A shard's tensor that the index gives to another file (or to none): a malformed set
        // whose readers may disagree on which copy is the model's.
        const auto mapped = weight_map.find(hf_name);
        if (mapped == weight_map.end())
          return absl::InvalidArgumentError(absl::StrFormat(
              "%s: tensor '%s' is not in the weight_map of %s", file, hf_name, index_path));
        if (mapped->second != base)
          return absl::InvalidArgumentError(
              absl::StrFormat("%s: tensor '%s' is in this file, but %s maps it to %s", file,
                              hf_name, index_path, mapped->second));
      }
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
      // Two names for one parameter (model.layers.01.* and model.layers.1.*): neither may
      // silently win.
      if (const auto seen = source.find(ours); seen != source.end())
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: tensor '%s' is msa-train's %s, which %s already gave", file,
                            hf_name, ours, seen->second));
      source[ours] = absl::StrFormat("%s (tensor '%s')", file, hf_name);
      if (first) ck.dtype = info.dtype;
      first = false;
      MSA_ASSIGN_OR_RETURN(Tensor values, st_file->read_f32(hf_name));
      const float* x = values.data<float>();
      for (int64_t i = 0; i < values.numel(); ++i)
        if (!std::isfinite(x[i]))
          return absl::InvalidArgumentError(absl::StrFormat(
              "%s: tensor '%s' holds %g at element %d: a model with non-finite weights cannot be "
              "converted",
              file, hf_name, x[i], i));
      ck.params[ours] = std::move(values);
    }
  }
  // The index the other way round: every tensor it maps is in the shard it names (an entry
  // that is not means a stale index or shard, whose weights may not be the model's).
  for (const auto& [hf_name, file] : weight_map)
    if (!read_names.count(file + "/" + hf_name))
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s maps tensor '%s' to %s, which does not hold it", index_path, hf_name, file));
  for (const ParamSpec& s : specs)
    if (!ck.params.count(s.name))
      return absl::InvalidArgumentError(absl::StrFormat("%s: missing tensor '%s' (msa-train's %s)",
                                                        dir, our_to_hf_name(s.name), s.name));
  return ck;
}

std::map<std::string, std::string> hf_source_of(const std::string& run_json) {
  std::map<std::string, std::string> source;
  const nlohmann::json run = nlohmann::json::parse(run_json, nullptr, false);
  if (!run.is_object()) return source;
  for (const char* key : {"hf_architecture", "hf_dtype", "hf_config"})
    if (run.contains(key) && run[key].is_string()) source[key] = run[key].get<std::string>();
  return source;
}

absl::Status write_hf_checkpoint(const std::string& dir, const std::string& architecture,
                                 const ModelConfig& c, const std::map<std::string, Tensor>& params,
                                 StDtype dtype, const std::string& generation_fields) {
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
  j["rms_norm_eps"] = c.norm_eps;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  MSA_RETURN_IF_ERROR(write_hf_rope(c.rope(), c.head_dim, /*partial_rotary=*/false, j));
  j["torch_dtype"] = dtype == StDtype::kF32   ? "float32"
                     : dtype == StDtype::kF16 ? "float16"
                                              : "bfloat16";
  if (!generation_fields.empty()) {
    const nlohmann::ordered_json kept =
        nlohmann::ordered_json::parse(generation_fields, nullptr, /*allow_exceptions=*/false);
    if (!kept.is_object())
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --export_hf: the recorded source config fields are not a JSON object: %s",
          generation_fields));
    for (const auto& [key, value] : kept.items()) j[key] = value;
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --export_hf: cannot create '%s'", dir));
  // An export never replaces a model (the one it was converted from, say), and a sharded set
  // left there would sit beside the new single file, where readers disagree on which is the
  // model (transformers takes model.safetensors, an index-first reader the old shards).
  for (const char* name : {"config.json", "model.safetensors", "model.safetensors.index.json"})
    if (struct stat st; ::lstat((dir + "/" + name).c_str(), &st) == 0)  // a link too
      return absl::FailedPreconditionError(absl::StrFormat(
          "invalid --export_hf: '%s' already holds %s (a model is never overwritten); export "
          "into a new or empty directory",
          dir, name));
  if (architecture == "MistralForCausalLM") j["sliding_window"] = nullptr;  // full attention
  ModelConfig dense = c;
  dense.attention.clear();
  std::vector<StTensorOut> tensors;
  for (const ParamSpec& s : model_param_specs(dense)) {
    auto it = params.find(s.name);
    if (it == params.end())
      return absl::InvalidArgumentError(absl::StrFormat("export: no parameter %s", s.name));
    // One host f32 copy for the range check and the encoding (encode_f32 takes it as it is).
    const Tensor host = it->second.to(Device::kCPU).to(DType::kF32);
    if (dtype == StDtype::kF16) {
      // float16 tops out at 65504: a larger weight would be written as infinity.
      const float* x = host.data<float>();
      for (int64_t i = 0; i < host.numel(); ++i)
        if (std::abs(x[i]) > 65504.0f)
          return absl::InvalidArgumentError(absl::StrFormat(
              "export: %s holds %g (element %d), beyond float16's range (65504): export as bf16 "
              "or f32 (--export_dtype)",
              our_to_hf_name(s.name), x[i], i));
    }
    tensors.push_back({our_to_hf_name(s.name), dtype, s.shape, encode_f32(host, dtype)});
  }
  // config.json is written first and published last, so a directory holding it holds the whole
  // model; neither file replaces one that appeared meanwhile.
  const std::string config = dir + "/config.json", weights = dir + "/model.safetensors";
  MSA_ASSIGN_OR_RETURN(const std::string config_tmp, create_temp_beside(config));
  {
    std::ofstream f(config_tmp);
    f << j.dump(2) << "\n";
    f.close();
    if (!f) {
      std::remove(config_tmp.c_str());
      return absl::InternalError(absl::StrFormat("%s: write failed (disk full?)", config_tmp));
    }
  }
  if (absl::Status s = write_safetensors(weights, tensors, {{"format", "pt"}}, /*replace=*/false);
      !s.ok()) {
    std::remove(config_tmp.c_str());
    return s;
  }
  bool config_published = false;
  if (absl::Status s = publish_temp(config_tmp, config, /*replace=*/false, &config_published);
      !s.ok()) {
    // This call's own file (it replaced nothing), unless config.json is in place beside it.
    if (!config_published) std::remove(weights.c_str());
    return s;
  }
  return absl::OkStatus();
}

}  // namespace msa
