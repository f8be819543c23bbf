// config.json is user input: every field of a valid Hugging Face config mutated in type and value
// (seeded, bounded) gives either a valid conversion or an error naming the file (and, for a
// single mutated field that config.json refuses, the field); never a signal, an exception or a
// silent wrap. The conversion runs in this process: a crash fails the test binary.
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/rng.h"
#include "data/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/hf_convert.h"
#include "model/parameters.h"
#include "tests/testing/command.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

// The fields of a valid tiny Llama config, as raw JSON text, in order.
std::vector<std::pair<std::string, std::string>> valid_fields() {
  return {{"architectures", "[\"LlamaForCausalLM\"]"},
          {"vocab_size", "97"},
          {"hidden_size", "32"},
          {"num_hidden_layers", "2"},
          {"num_attention_heads", "4"},
          {"num_key_value_heads", "2"},
          {"head_dim", "8"},
          {"intermediate_size", "48"},
          {"rope_theta", "500000.0"},
          {"rms_norm_eps", "1e-05"},
          {"hidden_act", "\"silu\""},
          {"tie_word_embeddings", "false"},
          {"attention_bias", "false"},
          {"mlp_bias", "false"},
          // Llama 3.1's RoPE in both spellings at once (they must agree).
          {"rope_scaling",
           "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
           "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}"},
          {"rope_parameters",
           "{\"rope_theta\": 500000.0, \"rope_type\": \"llama3\", \"factor\": 8.0, "
           "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
           "\"original_max_position_embeddings\": 8192}"},
          {"partial_rotary_factor", "1.0"},
          {"layer_types", "[\"full_attention\", \"full_attention\"]"},
          {"sliding_window", "null"},
          {"use_sliding_window", "false"},
          {"torch_dtype", "\"bfloat16\""}};
}

std::string render(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string s = "{";
  for (size_t i = 0; i < fields.size(); ++i)
    s += (i ? ", \"" : "\"") + fields[i].first + "\": " + fields[i].second;
  return s + "}";
}

// Writes the weights of the valid config (f32) to dir/model.safetensors.
void write_weights(const std::string& dir) {
  ModelConfig c;
  c.vocab_size = 97;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 48;
  std::vector<StTensorOut> out;
  uint64_t seed = 7;
  for (const ParamSpec& s : model_param_specs(c)) {
    Tensor t = Tensor::empty(s.shape, DType::kF32);
    fill_normal(t, seed++, 0.0f, 0.1f);
    out.push_back({our_to_hf_name(s.name), StDtype::kF32, s.shape, encode_f32(t, StDtype::kF32)});
  }
  ASSERT_TRUE(write_safetensors(dir + "/model.safetensors", out).ok());
}

absl::StatusOr<HfCheckpoint> convert(const std::string& dir, const std::string& config) {
  std::ofstream(dir + "/config.json") << config;
  return read_hf_checkpoint(dir);
}

TEST(ConvertConfigTest, ValidConfigConverts) {
  const std::string dir = fresh_dir("config_valid");
  write_weights(dir);
  absl::StatusOr<HfCheckpoint> ck = convert(dir, render(valid_fields()));
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->config.n_layers, 2);
  EXPECT_EQ(ck->params.size(), model_param_specs(ck->config).size());
  EXPECT_EQ(ck->config.rope_theta, 500000.0);
  EXPECT_EQ(ck->config.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(ck->config.rope_scaling.factor, 8.0);
}

// The three failures of issue 18, each an error naming the file and the field.
TEST(ConvertConfigTest, ZeroHeadsWrappedLayersAndStringsAreErrorsNamingTheField) {
  const std::string dir = fresh_dir("config_named_errors");
  write_weights(dir);
  struct Case {
    std::string field, value;
  };
  const Case cases[] = {
      {"num_attention_heads", "0"},          // was a division by zero (SIGFPE)
      {"num_hidden_layers", "4294967297"},   // was 1 layer (32-bit wrap)
      {"vocab_size", "\"97\""},              // a string: was an uncaught exception
      {"hidden_size", "-32"},                // negative
      {"intermediate_size", "4.8e1"},        // a float
      {"num_key_value_heads", "3"},          // does not divide the heads
      {"head_dim", "9223372036854775808"},   // 2^63
      {"rope_theta", "\"NaN\""},             // NaN as a string
      {"rms_norm_eps", "-1e-5"},             // out of range
      {"tie_word_embeddings", "\"false\""},  // a string where a bool belongs
      {"rope_scaling", "[1, 2]"},            // an array where an object belongs
      {"hidden_act", "1"},                   // a number where a string belongs
      {"architectures", "[null]"},           // not a name
  };
  for (const Case& k : cases) {
    auto fields = valid_fields();
    bool found = false;
    for (auto& [name, value] : fields)
      if (name == k.field) value = k.value, found = true;
    if (!found) fields.push_back({k.field, k.value});
    // head_dim must be absent for num_attention_heads: 0 to reach the division.
    if (k.field == "num_attention_heads")
      for (auto& [name, value] : fields)
        if (name == "head_dim") value = "null";
    absl::StatusOr<HfCheckpoint> ck = convert(dir, render(fields));
    ASSERT_FALSE(ck.ok()) << k.field << " = " << k.value << " converted";
    EXPECT_THAT(std::string(ck.status().message()), HasSubstr(dir + "/config.json")) << k.field;
    EXPECT_THAT(std::string(ck.status().message()), HasSubstr(k.field)) << ck.status();
  }
}

// Fields set or replaced in the valid config; a value "" removes the field.
std::string config_with(std::vector<std::pair<std::string, std::string>> changes) {
  auto fields = valid_fields();
  for (const auto& [field, value] : changes) {
    auto it =
        std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return f.first == field; });
    if (value.empty()) {
      if (it != fields.end()) fields.erase(it);
    } else if (it != fields.end()) {
      it->second = value;
    } else {
      fields.push_back({field, value});
    }
  }
  return render(fields);
}

// Qwen2 / Qwen3 with use_sliding_window: the layers from max_window_layers (28 when absent) on
// attend within sliding_window (transformers' 4096 when absent). Refused unless the window is an
// explicit null or no layer reaches max_window_layers (the absent window was accepted before).
TEST(ConvertConfigTest, QwenSlidingWindowIsRefusedWhereALayerUsesIt) {
  struct Case {
    std::string window, max_window_layers;
    bool refused;
  };
  const Case cases[] = {
      {"", "", false},       // 2 layers, all below the default 28
      {"", "0", true},       // the absent window: transformers' 4096 from layer 0 on
      {"", "1", true},       // layer 1 slides
      {"", "2", false},      // no layer reaches it
      {"4096", "0", true},   // an explicit window
      {"null", "0", false},  // an explicit null: full attention
  };
  for (const char* arch : {"Qwen2ForCausalLM", "Qwen3ForCausalLM"})
    for (const Case& k : cases) {
      const std::string config = config_with({{"architectures", absl::StrFormat("[\"%s\"]", arch)},
                                              {"use_sliding_window", "true"},
                                              {"sliding_window", k.window},
                                              {"max_window_layers", k.max_window_layers}});
      absl::StatusOr<HfCheckpoint> ck = parse_hf_config(config, "cfg.json");
      const std::string what = absl::StrFormat("%s window '%s' max_window_layers '%s'", arch,
                                               k.window, k.max_window_layers);
      if (k.refused) {
        ASSERT_FALSE(ck.ok()) << what;
        EXPECT_THAT(std::string(ck.status().message()),
                    HasSubstr("cfg.json: field 'use_sliding_window' is true: layers " +
                              (k.max_window_layers.empty() ? "28" : k.max_window_layers)))
            << what;
      } else {
        EXPECT_TRUE(ck.ok()) << what << ": " << ck.status();
      }
    }
}

// Absent num_key_value_heads / head_dim take the architecture's transformers defaults (they were
// the query heads and hidden / heads for every architecture).
TEST(ConvertConfigTest, AbsentHeadFieldsTakeTheArchitecturesDefaults) {
  struct Case {
    std::string arch;
    int kv_heads, head_dim;
  };
  // 64 query heads of hidden 512: Llama's key/value heads default to the query heads.
  const Case cases[] = {{"LlamaForCausalLM", 64, 8},
                        {"MistralForCausalLM", 8, 8},
                        {"Qwen2ForCausalLM", 32, 8},
                        {"Qwen3ForCausalLM", 32, 128}};
  for (const Case& k : cases) {
    absl::StatusOr<HfCheckpoint> ck =
        parse_hf_config(config_with({{"architectures", absl::StrFormat("[\"%s\"]", k.arch)},
                                     {"hidden_size", "512"},
                                     {"num_attention_heads", "64"},
                                     {"num_key_value_heads", ""},
                                     {"head_dim", ""}}),
                        "cfg.json");
    ASSERT_TRUE(ck.ok()) << k.arch << ": " << ck.status();
    EXPECT_EQ(ck->config.n_kv_heads, k.kv_heads) << k.arch;
    EXPECT_EQ(ck->config.head_dim, k.head_dim) << k.arch;
    // An explicit null is transformers' None: the query heads, and hidden_size / heads.
    ck = parse_hf_config(config_with({{"architectures", absl::StrFormat("[\"%s\"]", k.arch)},
                                      {"hidden_size", "512"},
                                      {"num_attention_heads", "64"},
                                      {"num_key_value_heads", "null"},
                                      {"head_dim", "null"}}),
                         "cfg.json");
    ASSERT_TRUE(ck.ok()) << k.arch << ": " << ck.status();
    EXPECT_EQ(ck->config.n_kv_heads, 64) << k.arch;
    EXPECT_EQ(ck->config.head_dim, 8) << k.arch;
  }
  // A default that does not divide the heads is named as the default.
  absl::StatusOr<HfCheckpoint> ck = parse_hf_config(
      config_with({{"architectures", "[\"MistralForCausalLM\"]"}, {"num_key_value_heads", ""}}),
      "cfg.json");
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()),
              HasSubstr("field 'num_key_value_heads' is absent (MistralForCausalLM's default: 8), "
                        "which does not divide num_attention_heads (4)"));
}

// The program: a bad value is a one-line error and exit 1 (it was SIGFPE / abort).
TEST(ConvertConfigTest, MsaConvertExitsWithTheErrorInsteadOfASignal) {
  const std::string dir = fresh_dir("config_cli");
  write_weights(dir);
  for (const auto& [field, value] : std::vector<std::pair<std::string, std::string>>{
           {"num_attention_heads", "0"}, {"rope_theta", "\"1e4\""}}) {
    auto fields = valid_fields();
    for (auto& [name, v] : fields) {
      if (name == field) v = value;
      if (name == "head_dim") v = "null";
    }
    std::ofstream(dir + "/config.json") << render(fields);
    FILE* pipe = popen((msa::test::program_path("msa-convert") + " --hf_dir=" + dir +
                        " --output=" + dir + "/out.h5 2>&1")
                           .c_str(),
                       "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
    const int status = pclose(pipe);
    ASSERT_TRUE(WIFEXITED(status)) << field << ": killed by a signal\n" << out;
    EXPECT_EQ(WEXITSTATUS(status), 1) << out;
    EXPECT_THAT(out, HasSubstr(dir + "/config.json: field '" + field + "'"));
  }
}

TEST(ConvertConfigTest, FuzzedConfigsNeverCrash) {
  const std::string dir = fresh_dir("config_fuzz");
  write_weights(dir);
  const std::vector<std::string> mutations = {"0",
                                              "-1",
                                              "1",
                                              "2",
                                              "3",
                                              "7",
                                              "8",
                                              "64",
                                              "2147483647",
                                              "2147483648",
                                              "-2147483649",
                                              "4294967296",
                                              "4294967297",
                                              "9223372036854775807",
                                              "9223372036854775808",
                                              "-9223372036854775808",
                                              "18446744073709551615",
                                              "18446744073709551616",
                                              "1e308",
                                              "-1e308",
                                              "1e400",
                                              "1e-400",
                                              "0.0",
                                              "-0.0",
                                              "2.5",
                                              "8.0",
                                              "\"NaN\"",
                                              "\"inf\"",
                                              "\"-inf\"",
                                              "\"8\"",
                                              "\"\"",
                                              "\"silu\"",
                                              "\"default\"",
                                              "true",
                                              "false",
                                              "null",
                                              "[]",
                                              "[1]",
                                              "[\"LlamaForCausalLM\"]",
                                              "[\"Qwen3ForCausalLM\"]",
                                              "[[]]",
                                              "{}",
                                              "{\"rope_type\": \"default\"}",
                                              "{\"rope_type\": 1}",
                                              "{\"type\": null}",
                                              "{\"a\": [1, {\"b\": null}]}",
                                              "0.5",
                                              "{\"rope_type\": \"yarn\", \"factor\": 4.0}",
                                              "{\"rope_type\": \"llama3\"}",
                                              "{\"type\": \"linear\", \"factor\": 2}",
                                              "{\"full_attention\": {\"rope_theta\": 1e4}}",
                                              "[\"sliding_attention\"]"};
  std::mt19937_64 rng(20261129);
  const auto start = std::chrono::steady_clock::now();
  int runs = 0, converted = 0;
  const size_t sweep = valid_fields().size() * mutations.size();
  for (int it = 0; it < 5000; ++it) {
    // The sweep always completes; the random phase stops after 3 seconds in all.
    if (static_cast<size_t>(it) >= sweep &&
        std::chrono::steady_clock::now() - start > std::chrono::seconds(3))
      break;
    auto fields = valid_fields();
    // The first pass mutates every field with every value once; then 1 to 3 random fields.
    int mutated = -1;
    if (static_cast<size_t>(it) < sweep) {
      mutated = static_cast<int>(it / mutations.size());
      fields[mutated].second = mutations[it % mutations.size()];
    } else {
      const int n = 1 + static_cast<int>(rng() % 3);
      for (int m = 0; m < n; ++m) {
        auto& f = fields[rng() % fields.size()];
        f.second = rng() % 4 == 0 ? std::to_string(static_cast<int64_t>(rng() % 130) - 1)
                                  : mutations[rng() % mutations.size()];
      }
      if (rng() % 8 == 0) fields.erase(fields.begin() + rng() % fields.size());
    }
    const std::string config = render(fields);
    // The config alone first (no file I/O); what it accepts goes through the whole conversion
    // (config.json and the weights read from disk).
    absl::StatusOr<HfCheckpoint> ck = parse_hf_config(config, dir + "/config.json");
    if (ck.ok()) ck = convert(dir, config);
    ++runs;
    if (ck.ok()) {
      ++converted;
      EXPECT_TRUE(ck->config.validate().ok()) << config;
      EXPECT_EQ(ck->params.size(), model_param_specs(ck->config).size()) << config;
      continue;
    }
    const std::string message(ck.status().message());
    EXPECT_THAT(message, HasSubstr(dir)) << config;
    if (mutated >= 0 && message.rfind(dir + "/config.json: field", 0) == 0) {
      EXPECT_THAT(message, HasSubstr(fields[mutated].first)) << config << "\n" << message;
    }
  }
  EXPECT_GE(runs, static_cast<int>(valid_fields().size()));
  EXPECT_GT(converted, 0);  // harmless mutations (rope_theta: 2.5, ...) still convert
  std::printf("fuzz: %d configs, %d converted\n", runs, converted);
}

}  // namespace
}  // namespace msa
