// Hugging Face -> MSA conversion: tiny Llama / Qwen2 / Qwen3 checkpoints written with real HF
// names are converted by the msa-convert program; the converted model (attention forced dense)
// reproduces our dense model built from the same weights bit for bit; --export_hf gives back the
// same bytes; the converted model gets random W_IQ [G d_I, D] and W_IK [d_I, D]; the index warm-up
// (dense attention, the backbone training as the dense model would; or with the backbone frozen,
// outputs unchanged) raises the index recall.
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/rng.h"
#include "data/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/hf_convert.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"
#include "train/batch_source.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

struct Hf {
  std::string arch;
  bool bias = false, qk_norm = false, tied = false;
  // The config.json RoPE members, and what they mean.
  std::string rope_json = "\"rope_theta\": 500000.0, \"rope_scaling\": null";
  RopeConfig rope{500000.0};
};

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream text;
  text << f.rdbuf();
  return text.str();
}

std::pair<int, std::string> run(const std::string& args) {
  FILE* pipe = popen((msa::test::program_path("msa-convert") + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  return {WEXITSTATUS(status), out};
}

constexpr int kLayers = 2, kD = 32, kH = 4, kG = 2, kHd = 8, kF = 48, kV = 97;

// Writes a tiny HF checkpoint (bf16, random weights) and returns its tensors by HF name, as the
// f32 values the bf16 encodes.
std::map<std::string, Tensor> write_hf(const std::string& dir, const Hf& hf, uint64_t seed) {
  std::vector<std::pair<std::string, Shape>> shapes = {{"model.embed_tokens.weight", {kV, kD}},
                                                       {"model.norm.weight", {kD}}};
  if (!hf.tied) shapes.push_back({"lm_head.weight", {kV, kD}});
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes.push_back({p + "input_layernorm.weight", {kD}});
    shapes.push_back({p + "post_attention_layernorm.weight", {kD}});
    shapes.push_back({p + "self_attn.q_proj.weight", {kH * kHd, kD}});
    shapes.push_back({p + "self_attn.k_proj.weight", {kG * kHd, kD}});
    shapes.push_back({p + "self_attn.v_proj.weight", {kG * kHd, kD}});
    shapes.push_back({p + "self_attn.o_proj.weight", {kD, kH * kHd}});
    if (hf.bias) {
      shapes.push_back({p + "self_attn.q_proj.bias", {kH * kHd}});
      shapes.push_back({p + "self_attn.k_proj.bias", {kG * kHd}});
      shapes.push_back({p + "self_attn.v_proj.bias", {kG * kHd}});
    }
    if (hf.qk_norm) {
      shapes.push_back({p + "self_attn.q_norm.weight", {kHd}});
      shapes.push_back({p + "self_attn.k_norm.weight", {kHd}});
    }
    shapes.push_back({p + "mlp.gate_proj.weight", {kF, kD}});
    shapes.push_back({p + "mlp.up_proj.weight", {kF, kD}});
    shapes.push_back({p + "mlp.down_proj.weight", {kD, kF}});
  }
  std::map<std::string, Tensor> values;
  std::vector<StTensorOut> out;
  int i = 0;
  for (const auto& [name, shape] : shapes) {
    Tensor t = Tensor::empty(shape, DType::kF32);
    const bool is_norm = name.find("norm") != std::string::npos;
    fill_normal(t, seed + i++, is_norm ? 1.0f : 0.0f, is_norm ? 0.2f : 0.3f);
    StTensorOut o{name, StDtype::kBF16, shape, encode_f32(t, StDtype::kBF16)};
    // The reference values are what the bf16 bytes hold.
    for (int64_t j = 0; j < t.numel(); ++j)
      t.data<float>()[j] =
          bf16_to_float(bf16{static_cast<uint16_t>(o.bytes[2 * j] | (o.bytes[2 * j + 1] << 8))});
    values[name] = t;
    out.push_back(std::move(o));
  }
  // Two shards plus an index, as large models are stored.
  std::vector<StTensorOut> a(out.begin(), out.begin() + out.size() / 2),
      b(out.begin() + out.size() / 2, out.end());
  EXPECT_TRUE(write_safetensors(dir + "/model-00001-of-00002.safetensors", a).ok());
  EXPECT_TRUE(write_safetensors(dir + "/model-00002-of-00002.safetensors", b).ok());
  std::ofstream index(dir + "/model.safetensors.index.json");
  index << "{\"metadata\": {}, \"weight_map\": {";
  for (size_t j = 0; j < out.size(); ++j)
    index << (j ? "," : "") << "\"" << out[j].name << "\": \"model-0000" << (j < a.size() ? 1 : 2)
          << "-of-00002.safetensors\"";
  index << "}}";
  std::ofstream config(dir + "/config.json");
  config << "{\"architectures\": [\"" << hf.arch << "\"], \"vocab_size\": " << kV
         << ", \"hidden_size\": " << kD << ", \"num_hidden_layers\": " << kLayers
         << ", \"num_attention_heads\": " << kH << ", \"num_key_value_heads\": " << kG
         << ", \"head_dim\": " << kHd << ", \"intermediate_size\": " << kF
         << ", \"rms_norm_eps\": 1e-05, \"hidden_act\": \"silu\", "
         << "\"tie_word_embeddings\": " << (hf.tied ? "true" : "false") << ", " << hf.rope_json
         << ", \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 128000, "
         << "\"eos_token_id\": [128001, 128009], \"pad_token_id\": null, "
         << "\"max_position_embeddings\": 131072}";
  return values;
}

// Our dense model filled from the HF tensors through this test's own name list.
Transformer reference_dense_model(const Hf& hf, const std::map<std::string, Tensor>& w) {
  ModelConfig c;
  c.vocab_size = kV;
  c.d_model = kD;
  c.n_layers = kLayers;
  c.n_heads = kH;
  c.n_kv_heads = kG;
  c.head_dim = kHd;
  c.ffn_dim = kF;
  c.rope_theta = hf.rope.theta;
  c.rope_scaling = hf.rope.scaling;
  c.rotary_dim = static_cast<int>(hf.rope.rotary_dim);
  c.norm_eps = 1e-5;
  c.tied_embeddings = hf.tied;
  c.qkv_bias = hf.bias;
  c.qk_norm = hf.qk_norm;
  Transformer model(c, DType::kF32, Device::kCPU);
  auto set = [&](const std::string& ours, const std::string& theirs) {
    model.params().at(ours).value.copy_from(w.at(theirs));
  };
  set("embed.weight", "model.embed_tokens.weight");
  set("final_norm.weight", "model.norm.weight");
  if (!hf.tied) set("lm_head.weight", "lm_head.weight");
  for (int l = 0; l < kLayers; ++l) {
    const std::string o = "layers." + std::to_string(l) + ".",
                      t = "model.layers." + std::to_string(l) + ".";
    set(o + "attn_norm.weight", t + "input_layernorm.weight");
    set(o + "mlp_norm.weight", t + "post_attention_layernorm.weight");
    for (const char* x : {"q", "k", "v"}) {
      set(o + "attn.w" + x + ".weight", t + "self_attn." + x + "_proj.weight");
      if (hf.bias) set(o + "attn.w" + x + ".bias", t + "self_attn." + x + "_proj.bias");
    }
    if (hf.qk_norm) {
      set(o + "attn.q_norm.weight", t + "self_attn.q_norm.weight");
      set(o + "attn.k_norm.weight", t + "self_attn.k_norm.weight");
    }
    set(o + "attn.wo.weight", t + "self_attn.o_proj.weight");
    set(o + "mlp.w_gate.weight", t + "mlp.gate_proj.weight");
    set(o + "mlp.w_up.weight", t + "mlp.up_proj.weight");
    set(o + "mlp.w_down.weight", t + "mlp.down_proj.weight");
  }
  return model;
}

Transformer load_model(const Checkpoint& ckpt) {
  Transformer model(ckpt.config, DType::kF32, Device::kCPU);
  for (Parameter& p : model.params().all()) p.value.copy_from(ckpt.params.at(p.spec.name));
  return model;
}

void tokens_for(Tensor& tokens, Tensor& targets, int64_t batch, int64_t T, uint64_t seed) {
  tokens = Tensor::empty({batch, T}, DType::kI32);
  targets = Tensor::empty({batch, T}, DType::kI32);
  for (int64_t i = 0; i < batch * T; ++i) {
    tokens.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(seed, i).v[0] % kV);
    targets.data<int32_t>()[i] = static_cast<int32_t>(philox4x32(seed, i).v[1] % kV);
  }
}

void check_conversion(const Hf& hf, const std::string& name) {
  const std::string dir = fresh_dir(name);
  const std::map<std::string, Tensor> w = write_hf(dir, hf, 100);
  const std::string out = dir + "/msa.h5";
  auto [rc, log] = run("--hf_dir=" + dir + " --output=" + out +
                       " --msa_block_size=4 --msa_topk=2 --msa_index_dim=4");
  ASSERT_EQ(rc, 0) << log;
  auto ckpt = load_checkpoint(out, /*weights_only=*/true);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(ckpt->config.any_msa());
  EXPECT_EQ(ckpt->config.layer_kind(1), AttentionKind::kMsa);
  // One index query head per KV group, one index key head shared by the groups; random.
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".attn.";
    EXPECT_EQ(ckpt->params.at(p + "index_wq.weight").shape(), (Shape{kG * 4, kD}));
    EXPECT_EQ(ckpt->params.at(p + "index_wk.weight").shape(), (Shape{4, kD}));
    double sq = 0;
    for (double x : ckpt->params.at(p + "index_wk.weight").to_double_vector()) sq += x * x;
    EXPECT_NEAR(sq / (4 * kD), 1.0 / kD, 0.5 / kD) << "W_IK is not N(0, 1/D)";
  }

  Transformer converted = load_model(*ckpt);
  Transformer dense = reference_dense_model(hf, w);
  Tensor tokens, targets;
  tokens_for(tokens, targets, 2, 19, 5);
  ForwardOptions forced_dense;
  forced_dense.msa_mode = MsaMode::kDenseWarmup;
  forced_dense.for_backward = false;
  ForwardOptions plain;
  plain.for_backward = false;
  const ForwardResult a = converted.forward(tokens, targets, forced_dense);
  const ForwardResult b = dense.forward(tokens, targets, plain);
  EXPECT_EQ(a.lm_loss, b.lm_loss);
  EXPECT_EQ(converted.logits().to_double_vector(), dense.logits().to_double_vector())
      << "converted model (attention forced dense) differs from the dense reference";

  // Round trip: the exported safetensors hold exactly the source's bytes.
  const std::string back = dir + "/exported";
  auto [rc2, log2] = run("--checkpoint=" + out + " --export_hf=" + back);
  ASSERT_EQ(rc2, 0) << log2;
  auto exported = SafetensorsFile::open(back + "/model.safetensors");
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ((*exported)->tensors().size(), w.size());
  for (const char* shard :
       {"/model-00001-of-00002.safetensors", "/model-00002-of-00002.safetensors"}) {
    auto src = SafetensorsFile::open(dir + shard);
    ASSERT_TRUE(src.ok());
    for (const auto& [tname, info] : (*src)->tensors()) {
      ASSERT_TRUE((*exported)->tensors().count(tname)) << tname;
      const StTensorInfo& e = (*exported)->tensors().at(tname);
      EXPECT_EQ(e.dtype, info.dtype) << tname;
      ASSERT_EQ(e.end - e.begin, info.end - info.begin) << tname;
      EXPECT_EQ(0,
                std::memcmp((*exported)->bytes(tname), (*src)->bytes(tname), info.end - info.begin))
          << tname << " is not byte-identical after the round trip";
    }
  }
  auto reread = read_hf_checkpoint(back);
  ASSERT_TRUE(reread.ok()) << reread.status();
  EXPECT_EQ(reread->architecture, hf.arch);
  EXPECT_EQ(ckpt->config.rope(), hf.rope);
  EXPECT_EQ(reread->config.rope(), hf.rope) << "the exported config.json reads back differently";
  // What generation reads from config.json comes back too (transformers' defaults, bos 1, eos 2
  // and 2048 positions, took its place).
  std::ifstream exported_config(back + "/config.json");
  const nlohmann::json j = nlohmann::json::parse(exported_config);
  EXPECT_EQ(j.value("bos_token_id", -1), 128000);
  EXPECT_EQ(j["eos_token_id"], nlohmann::json::array({128001, 128009}));
  EXPECT_TRUE(j.contains("pad_token_id") && j["pad_token_id"].is_null());
  EXPECT_EQ(j.value("max_position_embeddings", -1), 131072);
}

TEST(ConvertHfTest, LlamaConvertsExactlyAndRoundTrips) {
  check_conversion({"LlamaForCausalLM"}, "llama");
}

TEST(ConvertHfTest, Qwen2WithQkvBiasAndTiedEmbeddings) {
  check_conversion({"Qwen2ForCausalLM", true, false, true}, "qwen2");
}

TEST(ConvertHfTest, Qwen3WithQkNorm) {
  check_conversion({"Qwen3ForCausalLM", false, true}, "qwen3");
}

// RoPE variants in both config.json spellings. The converted model must reproduce the dense
// reference built with the intended RoPE. With head_dim 8, theta 500000 and
// original_max_position_embeddings 512, llama3 keeps pair 0 (wavelength 6.3 < 128), interpolates
// pair 1 (167) and divides pairs 2 and 3 (4.4e3, 1.2e5 > 512).
Hf with_rope(Hf hf, const std::string& rope_json, const RopeConfig& rope) {
  hf.rope_json = rope_json;
  hf.rope = rope;
  return hf;
}

RopeConfig llama3_rope(double theta) {
  RopeConfig r{theta};
  r.scaling = {RopeScalingType::kLlama3, 8.0, 1.0, 4.0, 512.0};
  return r;
}

TEST(ConvertHfTest, LlamaWithLlama3ScalingInTransformers5Spelling) {
  check_conversion(
      with_rope({"LlamaForCausalLM"},
                "\"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"llama3\", "
                "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                "\"original_max_position_embeddings\": 512}",
                llama3_rope(500000.0)),
      "llama3_v5");
}

TEST(ConvertHfTest, LlamaWithLlama3ScalingInTransformers4Spelling) {
  check_conversion(
      with_rope({"LlamaForCausalLM"},
                "\"rope_theta\": 500000.0, \"rope_scaling\": {\"type\": \"llama3\", "
                "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                "\"original_max_position_embeddings\": 512}",
                llama3_rope(500000.0)),
      "llama3_v4");
}

TEST(ConvertHfTest, Qwen2WithThetaOnlyInRopeParameters) {
  Hf hf{"Qwen2ForCausalLM", true, false, true};
  check_conversion(
      with_rope(hf, "\"rope_parameters\": {\"rope_theta\": 1000000.0, \"rope_type\": \"default\"}",
                RopeConfig{1e6}),
      "qwen2_theta_v5");
}

TEST(ConvertHfTest, MistralWithLinearScaling) {
  RopeConfig linear{1e6};
  linear.scaling.type = RopeScalingType::kLinear;
  linear.scaling.factor = 4.0;
  check_conversion(with_rope({"MistralForCausalLM"},
                             "\"sliding_window\": null, \"rope_theta\": 1000000.0, "
                             "\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 4.0}",
                             linear),
                   "mistral_linear");
}

// The converted model's logits depend on the RoPE read: theta 10000 (what a transformers 5 config
// gave before rope_parameters was read) is visibly another model.
TEST(ConvertHfTest, ThetaChangesTheLogits) {
  const std::string dir = fresh_dir("theta_matters");
  const Hf hf = with_rope({"LlamaForCausalLM"}, "\"rope_parameters\": {\"rope_theta\": 500000.0}",
                          RopeConfig{500000.0});
  const std::map<std::string, Tensor> w = write_hf(dir, hf, 100);
  auto ck = read_hf_checkpoint(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->config.rope_theta, 500000.0);
  Transformer right = reference_dense_model(hf, w);
  Transformer wrong = reference_dense_model(with_rope(hf, "", RopeConfig{10000.0}), w);
  Tensor tokens, targets;
  tokens_for(tokens, targets, 1, 19, 5);
  ForwardOptions plain;
  plain.for_backward = false;
  right.forward(tokens, targets, plain);
  wrong.forward(tokens, targets, plain);
  const std::vector<double> a = right.logits().to_double_vector(),
                            b = wrong.logits().to_double_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::abs(a[i] - b[i]));
  for (double x : a) scale = std::max(scale, std::abs(x));
  EXPECT_GT(diff / scale, 1e-3);
}

TEST(ConvertHfTest, DefaultIndexDimIsThePapers) {
  const std::string dir = fresh_dir("default_dim");
  write_hf(dir, {"LlamaForCausalLM"}, 300);
  auto [rc, log] = run("--hf_dir=" + dir + " --output=" + dir + "/msa.h5");
  ASSERT_EQ(rc, 0) << log;
  auto ckpt = load_checkpoint(dir + "/msa.h5", true);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->config.msa.index_dim, 128);
  EXPECT_EQ(ckpt->config.msa.block_size, 128);
  EXPECT_EQ(ckpt->config.msa.topk, 16);
  EXPECT_EQ(ckpt->params.at("layers.0.attn.index_wq.weight").shape(), (Shape{kG * 128, kD}));
  EXPECT_EQ(ckpt->params.at("layers.0.attn.index_wk.weight").shape(), (Shape{128, kD}));
}

// msa-convert never replaces a file: an existing --output (its own input, a run's checkpoint) is
// refused and keeps its bytes (the save's rename took its place before). The conversion's flags
// given to an export are refused (they did nothing), and a conversion of our checkpoint keeps the
// Hugging Face source the dense one recorded, so that an export writes the source's dtype.
TEST(ConvertHfTest, NeverOverwritesAndKeepsTheSourceThroughCheckpoints) {
  const std::string dir = fresh_dir("no_overwrite");
  write_hf(dir, {"Qwen2ForCausalLM", /*bias=*/true}, 5);
  // Both shards rewritten in F32 (write_hf writes BF16, the export's fallback): an export that
  // lost the source would write bf16 Llama.
  for (const char* shard :
       {"/model-00001-of-00002.safetensors", "/model-00002-of-00002.safetensors"}) {
    std::vector<StTensorOut> tensors;
    {
      auto file = SafetensorsFile::open(dir + shard);
      ASSERT_TRUE(file.ok());
      for (const auto& [name, info] : (*file)->tensors())
        tensors.push_back(
            {name, StDtype::kF32, info.shape, encode_f32(*(*file)->read_f32(name), StDtype::kF32)});
    }
    ASSERT_TRUE(write_safetensors(dir + shard, tensors).ok());
  }
  auto [rc, log] = run("--hf_dir=" + dir + " --output=" + dir + "/dense.h5 --msa_layers=none");
  ASSERT_EQ(rc, 0) << log;
  const std::string dense = read_file(dir + "/dense.h5");
  std::tie(rc, log) = run("--checkpoint=" + dir + "/dense.h5 --output=" + dir +
                          "/dense.h5 --msa_block_size=4 --msa_topk=3 --msa_index_dim=8");
  EXPECT_EQ(rc, 1) << log;
  EXPECT_THAT(log, HasSubstr("invalid --output: '" + dir + "/dense.h5' already exists"));
  EXPECT_EQ(read_file(dir + "/dense.h5"), dense);

  std::tie(rc, log) = run("--checkpoint=" + dir + "/dense.h5 --output=" + dir +
                          "/msa.h5 --msa_block_size=4 --msa_topk=3 --msa_index_dim=8 "
                          "--msa_index_loss_weight=0.5");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_THAT(log, HasSubstr("--msa_index_loss_weight=0.5"));  // the msa-train flags it prints
  auto msa = load_checkpoint(dir + "/msa.h5", true);
  ASSERT_TRUE(msa.ok()) << msa.status();
  EXPECT_THAT(msa->run_json, HasSubstr("\"hf_architecture\":\"Qwen2ForCausalLM\""));
  EXPECT_THAT(msa->run_json, HasSubstr("\"hf_dtype\":\"F32\""));

  std::tie(rc, log) =
      run("--checkpoint=" + dir + "/msa.h5 --export_hf=" + dir + "/back --output=x.h5 --seed=5");
  EXPECT_EQ(rc, 1) << log;
  EXPECT_THAT(log, HasSubstr("invalid --output, --seed: they belong to a conversion"));
  EXPECT_FALSE(std::ifstream(dir + "/back/config.json").good());
  std::tie(rc, log) = run("--checkpoint=" + dir + "/msa.h5 --export_hf=" + dir + "/back");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_THAT(log, HasSubstr("Qwen2ForCausalLM, f32"));
  std::tie(rc, log) = run("--checkpoint=" + dir + "/msa.h5 --export_hf=" + dir + "/back");
  EXPECT_EQ(rc, 1) << log;
  EXPECT_THAT(log, HasSubstr("already holds config.json"));
}

// A non-finite weight is refused where it is read, naming the Hugging Face file and tensor (it
// was named only as our parameter in the output file's save).
TEST(ConvertHfTest, NonFiniteWeightIsRefusedNamingTheSourceTensor) {
  const std::string dir = fresh_dir("nan_weight");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  const std::string second = dir + "/model-00002-of-00002.safetensors";
  std::vector<StTensorOut> tensors;
  {
    auto file = SafetensorsFile::open(second);
    ASSERT_TRUE(file.ok());
    for (const auto& [name, info] : (*file)->tensors()) {
      Tensor t = *(*file)->read_f32(name);
      if (name == "model.layers.1.mlp.up_proj.weight") t.data<float>()[7] = std::nanf("");
      tensors.push_back({name, StDtype::kF32, info.shape, encode_f32(t, StDtype::kF32)});
    }
  }
  ASSERT_TRUE(write_safetensors(second, tensors).ok());
  auto r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(second + ": tensor 'model.layers.1.mlp.up_proj.weight' holds nan at "
                                 "element 7"));
}

// A tiny Llama (HF tensors `hf`) converted by msa-convert to MSA with B 4, k 3, d_I 8 (`ckpt`).
struct ConvertedLlama {
  std::map<std::string, Tensor> hf;
  Checkpoint ckpt;
};
ConvertedLlama convert_tiny_llama(const std::string& name) {
  const std::string dir = fresh_dir(name);
  ConvertedLlama c;
  c.hf = write_hf(dir, {"LlamaForCausalLM"}, 200);
  auto [rc, log] = run("--hf_dir=" + dir + " --output=" + dir +
                       "/msa.h5 --msa_block_size=4 --msa_topk=3 --msa_index_dim=8");
  EXPECT_EQ(rc, 0) << log;
  auto ckpt = load_checkpoint(dir + "/msa.h5", true);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (ckpt.ok()) c.ckpt = *std::move(ckpt);
  return c;
}

// The warm-up tests' schedule: `steps` steps from max_lr (5 warm-up steps) down to max_lr / 10,
// recall measured at every step and query.
TrainerConfig warmup_schedule(int64_t steps, double max_lr) {
  TrainerConfig tc;
  tc.steps = steps;
  tc.lr.max_lr = max_lr;
  tc.lr.min_lr = max_lr / 10;
  tc.lr.warmup_steps = 5;
  tc.lr.total_steps = steps;
  tc.recall_every = 1;
  tc.recall_query_stride = 1;
  tc.quiet = true;
  return tc;
}

// Mean index recall of the MSA layers in `m` (which must have measured it).
double mean_recall(const StepMetrics& m) {
  EXPECT_EQ(m.index_recall.size(), 2u);
  EXPECT_EQ(m.block_recall.size(), 2u);
  return (m.index_recall[0] + m.index_recall[1]) / 2;
}

// The convert recipe's default warm-up: attention stays dense and the backbone trains on L_LM
// exactly as the dense model would (the KL's gradient reaches only W_IQ / W_IK), while the index
// learns the model's attention.
TEST(ConvertHfTest, DenseAttentionWarmupTrainsTheBackboneAsDenseAndRaisesRecall) {
  const ConvertedLlama c = convert_tiny_llama("dense_warmup");
  ASSERT_FALSE(c.ckpt.params.empty());
  Transformer model = load_model(c.ckpt);
  Transformer dense = reference_dense_model({"LlamaForCausalLM"}, c.hf);
  OptimizerConfig oc;
  oc.grad_clip = 0;  // clipping by the global norm would couple the backbone to W_IQ / W_IK
  AdamW optimizer(model.params(), oc), dense_optimizer(dense.params(), oc);
  auto data = make_repeating_source(kV, 4, 64, 29, 3);
  TrainerConfig tc = warmup_schedule(40, 3e-3);
  tc.dense_attention_steps = 40;
  TrainerConfig dense_tc = tc;
  dense_tc.recall_every = 0;
  Trainer trainer(model, optimizer, *data, tc),
      dense_trainer(dense, dense_optimizer, *data, dense_tc);
  std::vector<double> recall;
  for (int64_t step = 1; step <= 40; ++step) {
    const StepMetrics m = trainer.train_step(step);
    const StepMetrics ref = dense_trainer.train_step(step);
    ASSERT_TRUE(m.dense_attention);
    ASSERT_EQ(m.lm_loss, ref.lm_loss) << "step " << step;
    EXPECT_GT(m.index_loss, 0.0);
    recall.push_back(mean_recall(m));
  }
  for (const Parameter& p : dense.params().all())
    ASSERT_EQ(model.params().at(p.spec.name).value.to_double_vector(), p.value.to_double_vector())
        << p.spec.name << " trained differently from the dense model";
  const double first = (recall[0] + recall[1] + recall[2]) / 3,
               last = (recall[37] + recall[38] + recall[39]) / 3;
  std::printf(
      "index recall during the dense-attention warm-up: %.3f (steps 1-3) -> %.3f "
      "(steps 38-40)\n",
      first, last);
  EXPECT_GT(last, first + 0.02);
}

TEST(ConvertHfTest, IndexWarmupKeepsOutputsBitIdenticalAndRaisesRecall) {
  const ConvertedLlama c = convert_tiny_llama("warmup");
  ASSERT_FALSE(c.ckpt.params.empty());
  Transformer model = load_model(c.ckpt);
  Transformer dense = reference_dense_model({"LlamaForCausalLM"}, c.hf);
  AdamW optimizer(model.params(), OptimizerConfig{});
  auto data = make_repeating_source(kV, 4, 64, 29, 3);
  TrainerConfig tc = warmup_schedule(60, 1e-2);
  tc.index_warmup_steps = 60;
  Trainer trainer(model, optimizer, *data, tc);
  std::vector<double> recall;
  for (int64_t step = 1; step <= 60; ++step) {
    const StepMetrics m = trainer.train_step(step);
    Batch b = data->get(step, 0);
    ForwardOptions plain;
    plain.for_backward = false;
    const ForwardResult ref = dense.forward(b.tokens, b.targets, plain);
    ASSERT_EQ(m.lm_loss, ref.lm_loss) << "step " << step << ": the warm-up changed the LM loss";
    recall.push_back(mean_recall(m));
  }
  for (const auto& [name, t] : c.ckpt.params) {
    if (name.find("index_w") != std::string::npos) continue;
    ASSERT_EQ(model.params().at(name).value.to_double_vector(), t.to_double_vector())
        << name << " changed during the warm-up";
  }
  const double first = (recall[0] + recall[1] + recall[2]) / 3,
               last = (recall[57] + recall[58] + recall[59]) / 3;
  std::printf("index recall during warm-up: %.3f (steps 1-3) -> %.3f (steps 58-60)\n", first, last);
  EXPECT_GT(last, first + 0.02);
}

// After the frozen warm-up the backbone's moments start from zero: its first update is Adam's
// first step, |dw| = lr wherever |g| >> eps (no weight decay, no clipping). The bias correction
// counted the run's step instead: at step W + 1 = 4 the update was ~0.58 lr.
TEST(ConvertHfTest, BackbonesFirstUpdateAfterTheFrozenWarmupIsAdamsFirstStep) {
  const ConvertedLlama c = convert_tiny_llama("warmup_bias");
  ASSERT_FALSE(c.ckpt.params.empty());
  Transformer model = load_model(c.ckpt);
  OptimizerConfig oc;
  oc.weight_decay = 0;
  oc.grad_clip = 0;
  AdamW optimizer(model.params(), oc);
  auto data = make_repeating_source(kV, 4, 64, 29, 3);
  TrainerConfig tc;
  tc.steps = 4;
  tc.lr = LrSchedule{1e-3, 1e-3, 0, 4};  // constant
  tc.index_warmup_steps = 3;
  tc.quiet = true;
  Trainer trainer(model, optimizer, *data, tc);
  for (int64_t step = 1; step <= 3; ++step) trainer.train_step(step);
  const std::string name = "layers.0.mlp.w_up.weight";
  const std::vector<double> before = model.params().at(name).value.to_double_vector();
  ASSERT_FALSE(trainer.train_step(4).skipped);
  const std::vector<double> after = model.params().at(name).value.to_double_vector();
  int64_t moved = 0;
  double worst = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    ASSERT_TRUE(std::isfinite(after[i])) << name << "[" << i << "]";
    const double step_size = std::abs(after[i] - before[i]) / 1e-3;
    if (step_size < 0.5) continue;  // |g| not >> eps (or zero)
    ++moved;
    worst = std::max(worst, std::abs(step_size - 1.0));
  }
  EXPECT_GT(moved, static_cast<int64_t>(before.size() / 2)) << name;
  EXPECT_LT(worst, 1e-2) << name << ": the first backbone update is not lr in size";
  // The index branch kept counting from step 1: step 4 is its fourth update (not lr in size).
}

// ---- malformed input -----------------------------------------------------------------------

TEST(ConvertHfTest, RefusesUnsupportedConfigsNamingTheField) {
  const std::string dir = fresh_dir("bad_config");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  auto with_config = [&](const std::string& from, const std::string& to) {
    std::ifstream in(dir + "/config.json");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos);
    text.replace(at, from.size(), to);
    std::ofstream(dir + "/config.json") << text;
    auto r = read_hf_checkpoint(dir);
    std::ofstream(dir + "/config.json") << std::string(text).replace(at, to.size(), from);
    return r.ok() ? std::string("ok") : std::string(r.status().message());
  };
  EXPECT_THAT(with_config("LlamaForCausalLM", "GPT2LMHeadModel"),
              HasSubstr("unsupported architecture 'GPT2LMHeadModel'"));
  EXPECT_THAT(with_config("\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"yarn\"}"),
              HasSubstr("field 'rope_scaling.rope_type' is 'yarn'"));
  EXPECT_THAT(with_config("\"rope_scaling\": null",
                          "\"rope_scaling\": null, \"rope_parameters\": {\"rope_theta\": 1e4}"),
              HasSubstr("field 'rope_theta' is 500000, but field 'rope_parameters.rope_theta' is "
                        "10000"));
  EXPECT_THAT(with_config("\"rope_scaling\": null",
                          "\"rope_scaling\": null, \"partial_rotary_factor\": 0.5"),
              HasSubstr("field 'partial_rotary_factor' is 0.5"));
  EXPECT_THAT(with_config("\"intermediate_size\": 48", "\"intermediate_size\": 64"),
              HasSubstr("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [48, 32] but "
                        "config.json implies [64, 32]"));
  EXPECT_THAT(with_config("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
              HasSubstr("missing tensor 'model.layers.2.input_layernorm.weight'"));
  EXPECT_THAT(with_config("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
              HasSubstr("tensor 'model.layers.1."));
  EXPECT_THAT(with_config("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""),
              HasSubstr("field 'hidden_act'"));
}

// --msa_layers lists layer indices, each once: an empty list or entry (a typo) gave an all-dense
// "conversion" with exit 0, a repeated index passed without a word.
TEST(ConvertHfTest, MsaLayersMustListEachLayerOnce) {
  const std::string dir = fresh_dir("msa_layers");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  for (const std::string& spec : {"", ",", "0,,1", "0,0", "2", "x"}) {
    auto [rc, log] = run("--hf_dir=" + dir + " --output=" + dir +
                         "/msa.h5 --msa_block_size=4 --msa_topk=3 --msa_index_dim=8 "
                         "--msa_layers='" +
                         spec + "'");
    EXPECT_EQ(rc, 1) << spec << "\n" << log;
    EXPECT_THAT(log, HasSubstr("invalid --msa_layers")) << spec;
  }
  auto [rc, log] = run("--hf_dir=" + dir + " --output=" + dir +
                       "/msa.h5 --msa_block_size=4 --msa_topk=3 --msa_index_dim=8 --msa_layers=1");
  EXPECT_EQ(rc, 0) << log;
}

// A sharded set whose files and index disagree, or a directory that holds both a sharded set and a
// single file, is refused: readers would disagree on which copy of a tensor is the model's (before,
// the last file read silently won, and the index beat a newer model.safetensors).
TEST(ConvertHfTest, RefusesShardsAndIndexThatDisagree) {
  const std::string dir = fresh_dir("shards_disagree");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  ASSERT_TRUE(read_hf_checkpoint(dir).ok());
  const std::string second = dir + "/model-00002-of-00002.safetensors";
  auto second_file = SafetensorsFile::open(second);
  ASSERT_TRUE(second_file.ok());
  ASSERT_EQ(second_file.value()->tensors().count("model.embed_tokens.weight"), 0u);
  // The second shard also holds a (zeroed) embedding that the index gives to the first.
  std::vector<StTensorOut> tensors;
  for (const auto& [name, info] : second_file.value()->tensors())
    tensors.push_back({name, StDtype::kF32, info.shape,
                       encode_f32(*second_file.value()->read_f32(name), StDtype::kF32)});
  tensors.push_back({"model.embed_tokens.weight",
                     StDtype::kF32,
                     {kV, kD},
                     encode_f32(Tensor::zeros({kV, kD}, DType::kF32), StDtype::kF32)});
  second_file.value().reset();
  ASSERT_TRUE(write_safetensors(second, tensors).ok());
  auto r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("tensor 'model.embed_tokens.weight' is in this file, but " + dir +
                        "/model.safetensors.index.json maps it to model-00001-of-00002"));

  const std::string both = fresh_dir("index_and_single");
  write_hf(both, {"LlamaForCausalLM"}, 1);
  std::ofstream(both + "/model.safetensors") << "x";
  r = read_hf_checkpoint(both);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("holds both model.safetensors and model.safetensors.index.json"));

  // Exporting into a sharded directory would leave exactly that; an export never replaces a
  // model either (each of its files alone is refused: the index, a single model.safetensors, a
  // config.json), and the files there keep their bytes.
  const std::string target = fresh_dir("export_into_shards");
  write_hf(target, {"LlamaForCausalLM"}, 1);
  auto hf = read_hf_checkpoint(target);
  ASSERT_TRUE(hf.ok()) << hf.status();
  const std::string config_before = read_file(target + "/config.json");
  ASSERT_FALSE(config_before.empty());
  for (const char* only : {"model.safetensors.index.json", "model.safetensors", "config.json"}) {
    const std::string into = fresh_dir(std::string("export_over_") + only);
    std::ofstream(into + "/" + only) << "kept";
    const absl::Status exported =
        write_hf_checkpoint(into, "LlamaForCausalLM", hf->config, hf->params, StDtype::kBF16);
    EXPECT_THAT(std::string(exported.message()), HasSubstr("'" + into + "' already holds " + only +
                                                           " (a model is never overwritten)"));
    EXPECT_EQ(read_file(into + "/" + only), "kept") << only;
    for (const char* other : {"model.safetensors", "config.json"})
      if (std::string(other) != only)
        EXPECT_FALSE(std::ifstream(into + "/" + other).good()) << only << " / " << other;
  }
  const absl::Status exported =
      write_hf_checkpoint(target, "LlamaForCausalLM", hf->config, hf->params, StDtype::kBF16);
  EXPECT_THAT(std::string(exported.message()), HasSubstr("already holds config.json"));
  EXPECT_EQ(read_file(target + "/config.json"), config_before);
  EXPECT_FALSE(std::ifstream(target + "/model.safetensors").good());
}

// The index the other way round: an entry whose shard does not hold the tensor (a stale index,
// or a config that shrank) is refused naming the shard, and a shard name that is a path (read
// from outside the model directory) is refused naming the index. Both converted without a word.
TEST(ConvertHfTest, RefusesIndexEntriesTheirShardDoesNotHoldAndShardPaths) {
  const std::string dir = fresh_dir("index_entries");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  const std::string index_path = dir + "/model.safetensors.index.json";
  const nlohmann::json index = nlohmann::json::parse(read_file(index_path));
  auto rewrite = [&](const nlohmann::json& j) { std::ofstream(index_path) << j.dump(); };
  nlohmann::json extra = index;
  extra["weight_map"]["model.layers.7.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors";
  rewrite(extra);
  auto r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(index_path + " maps tensor 'model.layers.7.mlp.up_proj.weight' to "
                                     "model-00001-of-00002.safetensors, which does not hold it"));
  // A tensor the model needs, mapped to the shard without it: the message names that shard.
  nlohmann::json moved = index;
  const std::string owner = moved["weight_map"]["model.norm.weight"];
  moved["weight_map"]["model.norm.weight"] = owner == "model-00001-of-00002.safetensors"
                                                 ? "model-00002-of-00002.safetensors"
                                                 : "model-00001-of-00002.safetensors";
  rewrite(moved);
  r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'model.norm.weight'"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("model-0000"));
  for (const char* shard : {"../outside.safetensors", "/abs/model.safetensors", ".."}) {
    nlohmann::json path = index;
    path["weight_map"]["model.norm.weight"] = shard;
    rewrite(path);
    r = read_hf_checkpoint(dir);
    ASSERT_FALSE(r.ok()) << shard;
    EXPECT_THAT(std::string(r.status().message()),
                HasSubstr(index_path + ": weight_map names the shard '" + shard +
                          "', which is not a file name in " + dir))
        << shard;
  }
  rewrite(index);
  EXPECT_TRUE(read_hf_checkpoint(dir).ok());
}

// The temporary files of a conversion and an export are their own: a file of the user's called
// <output>.tmp or model.safetensors.tmp keeps its bytes (it was truncated and renamed away), and
// nothing temporary is left behind.
TEST(ConvertHfTest, TemporaryFilesNeverTakeAnExistingName) {
  const std::string dir = fresh_dir("temp_names");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  std::ofstream(dir + "/out.h5.tmp") << "precious";
  auto [rc, log] = run("--hf_dir=" + dir + " --output=" + dir +
                       "/out.h5 --msa_block_size=4 --msa_topk=3 --msa_index_dim=8");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_EQ(read_file(dir + "/out.h5.tmp"), "precious");
  EXPECT_TRUE(load_checkpoint(dir + "/out.h5", true).ok());
  const std::string back = dir + "/back";
  ASSERT_EQ(::mkdir(back.c_str(), 0755), 0);
  std::ofstream(back + "/model.safetensors.tmp") << "precious";
  std::ofstream(back + "/config.json.tmp") << "precious";
  std::tie(rc, log) = run("--checkpoint=" + dir + "/out.h5 --export_hf=" + back);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_EQ(read_file(back + "/model.safetensors.tmp"), "precious");
  EXPECT_EQ(read_file(back + "/config.json.tmp"), "precious");
  EXPECT_TRUE(read_hf_checkpoint(back).ok());
  const std::string listing = [&] {
    FILE* p = popen(("ls -a '" + dir + "' '" + back + "'").c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
  }();
  EXPECT_THAT(listing, ::testing::Not(HasSubstr(".tmp.")));
}

// A model whose weights do not fit in host memory as f32 is refused before any shard is read
// (it was read shard by shard until the OOM killer ended the process without a message).
TEST(ConvertHfTest, ModelLargerThanHostMemoryIsRefusedUpFront) {
  const std::string dir = fresh_dir("too_large");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  nlohmann::json config = nlohmann::json::parse(read_file(dir + "/config.json"));
  config["vocab_size"] = 2147483647;  // with a hidden size of 2^16: 512 TiB of f32 embeddings
  config["hidden_size"] = 65536;
  std::ofstream(dir + "/config.json") << config.dump();
  auto r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(dir + "/config.json: the model's weights take"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("GiB available"));
}

// transformers' MistralConfig reads an absent sliding_window as 4096: only an explicit null is
// full attention. The export writes the null.
TEST(ConvertHfTest, MistralWithoutAnExplicitNullSlidingWindowIsRefused) {
  const std::string dir = fresh_dir("mistral_sliding");
  write_hf(dir, {"MistralForCausalLM"}, 1);
  auto r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("field 'sliding_window' is absent, which transformers reads as Mistral's "
                        "default 4096"));
  const std::string null_dir = fresh_dir("mistral_full");
  write_hf(null_dir,
           with_rope({"MistralForCausalLM"}, "\"sliding_window\": null, \"rope_theta\": 500000.0",
                     RopeConfig{500000.0}),
           1);
  auto ok = read_hf_checkpoint(null_dir);
  ASSERT_TRUE(ok.ok()) << ok.status();
  const std::string out = fresh_dir("mistral_export");
  ASSERT_TRUE(
      write_hf_checkpoint(out, "MistralForCausalLM", ok->config, ok->params, StDtype::kBF16).ok());
  std::ifstream in(out + "/config.json");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_THAT(text, HasSubstr("\"sliding_window\": null"));
  EXPECT_TRUE(read_hf_checkpoint(out).ok());
}

// A FIFO where a file belongs would block the open forever.
TEST(ConvertHfTest, NonRegularFilesAreRefusedNotOpened) {
  const std::string dir = fresh_dir("fifo");
  write_hf(dir, {"LlamaForCausalLM"}, 1);
  ASSERT_EQ(::mkfifo((dir + "/model-00001-of-00002.safetensors.fifo").c_str(), 0644), 0);
  ASSERT_EQ(std::rename((dir + "/model-00001-of-00002.safetensors.fifo").c_str(),
                        (dir + "/model-00001-of-00002.safetensors").c_str()),
            0);
  auto r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not a regular file"));
  ASSERT_EQ(std::remove((dir + "/config.json").c_str()), 0);
  ASSERT_EQ(::mkfifo((dir + "/config.json").c_str(), 0644), 0);
  r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("config.json: cannot read: not a regular file"));
}

// The export's architecture must hold what the model has, and its dtype the values: a model
// with both q/k/v biases and q/k norms has no architecture (transformers would drop one of them),
// and a weight past float16's 65504 would be written as infinity.
TEST(ConvertHfTest, ExportRefusesWhatTheArchitectureOrDtypeCannotHold) {
  const std::string dir = fresh_dir("export_refusals"), hf = fresh_dir("export_refusals_hf");
  write_hf(hf, {"Qwen2ForCausalLM", true}, 1);
  ASSERT_EQ(run("--hf_dir=" + hf + " --output=" + dir + "/q2.h5").first, 0);
  auto ck = load_checkpoint(dir + "/q2.h5", /*weights_only=*/true);
  ASSERT_TRUE(ck.ok()) << ck.status();
  Checkpoint both = *ck;
  both.config.qk_norm = true;
  for (const ParamSpec& spec : model_param_specs(both.config))
    if (!both.params.count(spec.name)) {  // the q/k norms
      Tensor one = Tensor::zeros(spec.shape, DType::kF32);
      one.fill_(1.0);
      both.params[spec.name] = one;
    }
  ASSERT_TRUE(save_checkpoint(dir + "/both.h5", both).ok());
  const auto [code, out] = run("--checkpoint=" + dir + "/both.h5 --export_hf=" + dir + "/both_hf");
  EXPECT_EQ(code, 1) << out;
  EXPECT_THAT(out, HasSubstr("has q/k/v biases and q/k norms; no Hugging Face architecture"));

  std::map<std::string, Tensor> params = ck->params;
  params.at("layers.0.mlp.w_up.weight").data<float>()[3] = 1e5f;
  const absl::Status f16 =
      write_hf_checkpoint(dir + "/f16", "Qwen2ForCausalLM", ck->config, params, StDtype::kF16);
  EXPECT_THAT(std::string(f16.message()),
              HasSubstr("model.layers.0.mlp.up_proj.weight holds 100000 (element 3), beyond "
                        "float16's range"));
  EXPECT_TRUE(
      write_hf_checkpoint(dir + "/bf16", "Qwen2ForCausalLM", ck->config, params, StDtype::kBF16)
          .ok());
}

TEST(ConvertHfTest, RefusesUnmappedTensors) {
  const std::string dir = fresh_dir("unmapped");
  Tensor t = Tensor::zeros({4}, DType::kF32);
  ASSERT_TRUE(
      write_safetensors(dir + "/model.safetensors", {{"model.layers.0.self_attn.rotary_proj.weight",
                                                      StDtype::kF32,
                                                      {4},
                                                      encode_f32(t, StDtype::kF32)}})
          .ok());
  std::ofstream(dir + "/config.json")
      << "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 97, \"hidden_size\": 32, "
         "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
         "\"intermediate_size\": 48}";
  auto r = read_hf_checkpoint(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("tensor 'model.layers.0.self_attn.rotary_proj.weight' has no counterpart"));
}

// Writes raw bytes: an 8-byte header length, then the header text, then `data` bytes.
std::string raw_file(const std::string& name, uint64_t header_len, const std::string& header,
                     size_t data) {
  const std::string path = std::string(::testing::TempDir()) + "/" + name;
  std::ofstream f(path, std::ios::binary);
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>(header_len >> (8 * i)));
  f << header << std::string(data, '\0');
  return path;
}

std::string open_error(const std::string& path) {
  auto r = SafetensorsFile::open(path);
  return r.ok() ? "ok" : std::string(r.status().message());
}

TEST(SafetensorsTest, MalformedFilesAreRejectedWithAClearMessage) {
  const std::string good = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  EXPECT_EQ(open_error(raw_file("good.st", good.size(), good, 8)), "ok");
  EXPECT_THAT(open_error(raw_file("len.st", 1000, good, 8)),
              HasSubstr("header length 1000 exceeds the file"));
  EXPECT_THAT(open_error(raw_file("json.st", 5, "{abc}", 8)),
              HasSubstr("header is not valid JSON"));
  const std::string i64 = R"({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})";
  EXPECT_THAT(open_error(raw_file("dtype.st", i64.size(), i64, 8)),
              HasSubstr("tensor 'a' has dtype 'I64'"));
  const std::string range = R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})";
  EXPECT_THAT(open_error(raw_file("range.st", range.size(), range, 8)),
              HasSubstr("outside the 8-byte data section"));
  const std::string size = R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})";
  EXPECT_THAT(open_error(raw_file("size.st", size.size(), size, 8)),
              HasSubstr("8 bytes for shape [3] of F32 (expected 12)"));
  const std::string overlap =
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  EXPECT_THAT(open_error(raw_file("overlap.st", overlap.size(), overlap, 12)),
              HasSubstr("byte ranges overlap at offset 4"));
  // The reference reader's rules: each name once, the tensors tiling the data section.
  const std::string twice =
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})";
  EXPECT_THAT(open_error(raw_file("twice.st", twice.size(), twice, 16)),
              HasSubstr("header lists 'a' twice"));
  const std::string hole =
      R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})";
  EXPECT_THAT(open_error(raw_file("hole.st", hole.size(), hole, 12)),
              HasSubstr("data bytes [4, 8) belong to no tensor"));
  EXPECT_THAT(open_error(raw_file("trailing.st", good.size(), good, 4008)),
              HasSubstr("4000 trailing bytes after the last tensor"));
  // Element counts whose byte count wrapped (2^62 x 4 bytes = 0) or dimensions past int64.
  for (const char* shape :
       {"[4611686018427387904]", "[2147483648, 2147483648]", "[0, 9223372036854775808]"}) {
    const std::string huge = std::string(R"({"a": {"dtype": "F32", "shape": )") + shape +
                             R"(, "data_offsets": [0, 0]}})";
    EXPECT_THAT(open_error(raw_file("huge.st", huge.size(), huge, 0)),
                HasSubstr("tensor 'a': shape overflows"))
        << shape;
  }
  const std::string neg = R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})";
  EXPECT_THAT(open_error(raw_file("neg.st", neg.size(), neg, 8)), HasSubstr("negative"));
  std::ofstream(std::string(::testing::TempDir()) + "/tiny.st") << "abc";
  EXPECT_THAT(open_error(std::string(::testing::TempDir()) + "/tiny.st"), HasSubstr("too short"));
}

TEST(SafetensorsTest, RandomCorruptionNeverCrashes) {
  // A valid file with three tensors; then many corrupted copies (flipped header bytes, rewritten
  // lengths, truncations): each must open cleanly or fail with a message, and every tensor of a
  // file that opens must be readable inside the file.
  Tensor t = Tensor::empty({3, 5}, DType::kF32);
  fill_normal(t, 1, 0.0f, 1.0f);
  const std::string path = std::string(::testing::TempDir()) + "/fuzz_src.st";
  ASSERT_TRUE(write_safetensors(path, {{"x", StDtype::kF32, {3, 5}, encode_f32(t, StDtype::kF32)},
                                       {"y", StDtype::kBF16, {3, 5}, encode_f32(t, StDtype::kBF16)},
                                       {"z", StDtype::kF16, {15}, encode_f32(t, StDtype::kF16)}})
                  .ok());
  std::ifstream in(path, std::ios::binary);
  const std::string src((std::istreambuf_iterator<char>(in)), {});
  int opened = 0, rejected = 0;
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    std::string bytes = src;
    const Philox4 r = philox4x32(77, seed);
    switch (r.v[0] % 4) {
      case 0:  // flip a byte in the length or header
        bytes[r.v[1] % std::min<size_t>(bytes.size(), 200)] ^= static_cast<char>(1 + r.v[2] % 255);
        break;
      case 1:  // truncate
        bytes.resize(r.v[1] % bytes.size());
        break;
      case 2:  // replace a digit in the header
        for (size_t i = 8 + r.v[1] % 100; i < bytes.size(); ++i)
          if (bytes[i] >= '0' && bytes[i] <= '9') {
            bytes[i] = static_cast<char>('0' + r.v[2] % 10);
            break;
          }
        break;
      default:  // garbage length
        for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(r.v[1 + i % 3] >> (8 * (i % 4)));
    }
    const std::string p = std::string(::testing::TempDir()) + "/fuzz.st";
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
    auto f = SafetensorsFile::open(p);
    if (!f.ok()) {
      ++rejected;
      EXPECT_THAT(std::string(f.status().message()), HasSubstr(p));
      continue;
    }
    ++opened;
    for (const auto& [name, info] : (*f)->tensors()) ASSERT_TRUE((*f)->read_f32(name).ok());
  }
  EXPECT_GT(rejected, 1000);
  std::printf("random corruption: %d files opened (still consistent), %d rejected\n", opened,
              rejected);
}

}  // namespace
}  // namespace msa
