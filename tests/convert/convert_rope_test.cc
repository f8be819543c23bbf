// RoPE fields of config.json (launch/hf_rope_config.h): transformers 4's top-level rope_theta /
// rope_scaling and transformers 5's rope_parameters (flat or per attention type) read alike; values
// given in both spellings must agree; unsupported types, unknown keys, missing or unused
// parameters and partial rotary (which transformers' Llama/Mistral/Qwen2/Qwen3 ignore) are refused
// naming the field; export writes both spellings and reads back to the same config; the model
// config and the checkpoint carry the variants (format version 2), and older files without them
// read as plain RoPE.
#include <hdf5.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/hf_convert.h"
#include "launch/hf_rope_config.h"
#include "launch/train_program.h"
#include "model/parameters.h"
#include "train/checkpoint.h"

namespace msa {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A tiny Llama config.json (head_dim 8) with `rope` (raw JSON members) appended.
std::string config(const std::string& rope, const std::string& arch = "LlamaForCausalLM") {
  std::string s = "{\"architectures\": [\"" + arch +
                  "\"], \"vocab_size\": 97, \"hidden_size\": 32, \"num_hidden_layers\": 2, "
                  "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8, "
                  "\"intermediate_size\": 48";
  if (!rope.empty()) s += ", " + rope;
  return s + "}";
}

absl::StatusOr<ModelConfig> parse(const std::string& rope,
                                  const std::string& arch = "LlamaForCausalLM") {
  auto ck = parse_hf_config(config(rope, arch), "cfg.json");
  if (!ck.ok()) return ck.status();
  return ck->config;
}

std::string error(const std::string& rope) {
  auto c = parse(rope);
  return c.ok() ? std::string("ok") : std::string(c.status().message());
}

constexpr char kLlama3New[] =
    "\"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"llama3\", \"factor\": 32.0, "
    "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": "
    "8192}";
constexpr char kLlama3Old[] =
    "\"rope_theta\": 500000.0, \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 32.0, "
    "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": "
    "8192}";

RopeConfig llama3_32() {
  RopeConfig r{500000.0};
  r.scaling = {RopeScalingType::kLlama3, 32.0, 1.0, 4.0, 8192.0};
  return r;
}

// ---- reading ---------------------------------------------------------------------------------

TEST(ConvertRopeTest, AbsentFieldsMeanPlainRopeAtTenThousand) {
  auto c = parse("");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope(), RopeConfig{10000.0});
  EXPECT_TRUE(c->plain_rope());
}

TEST(ConvertRopeTest, ThetaIsReadFromEitherSpelling) {
  // transformers 5 writes only rope_parameters: before, its theta was silently 10000.
  for (const char* rope :
       {"\"rope_theta\": 1000000.0",
        "\"rope_parameters\": {\"rope_theta\": 1000000.0, "
        "\"rope_type\": \"default\"}",
        "\"rope_theta\": 1000000, \"rope_scaling\": null, \"rope_parameters\": {\"rope_theta\": "
        "1e6, \"rope_type\": \"default\"}",
        "\"rope_scaling\": {\"rope_type\": \"default\", \"rope_theta\": 1e6}"}) {
    auto c = parse(rope);
    ASSERT_TRUE(c.ok()) << rope << ": " << c.status();
    EXPECT_EQ(c->rope(), RopeConfig{1e6}) << rope;
  }
}

TEST(ConvertRopeTest, Llama3IsReadFromEitherSpellingAndBoth) {
  for (const std::string& rope :
       {std::string(kLlama3New), std::string(kLlama3Old),
        std::string(kLlama3New) + ", " + kLlama3Old,
        // "rope_type" instead of transformers 4.0's "type"
        absl::StrReplaceAll(kLlama3Old, {{"\"type\"", "\"rope_type\""}})}) {
    auto c = parse(rope);
    ASSERT_TRUE(c.ok()) << rope << ": " << c.status();
    EXPECT_EQ(c->rope(), llama3_32()) << rope;
  }
}

TEST(ConvertRopeTest, Llama3TakesTheTopLevelOriginalLength) {
  auto c = parse(
      "\"original_max_position_embeddings\": 8192, \"rope_parameters\": {\"rope_theta\": 5e5, "
      "\"rope_type\": \"llama3\", \"factor\": 32, \"low_freq_factor\": 1, \"high_freq_factor\": "
      "4}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope(), llama3_32());
}

TEST(ConvertRopeTest, LinearIsRead) {
  auto c =
      parse("\"rope_theta\": 10000.0, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_EQ(c->rope_scaling.factor, 4.0);
}

TEST(ConvertRopeTest, IdenticalPerAttentionTypeEntriesAreOneRope) {
  auto c = parse(
      "\"rope_parameters\": {\"full_attention\": {\"rope_theta\": 1e6, \"rope_type\": "
      "\"default\"}, \"sliding_attention\": {\"rope_theta\": 1e6, \"rope_type\": \"default\"}}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 1e6);
}

TEST(ConvertRopeTest, PartialRotaryFactorOfOneIsAccepted) {
  auto c = parse(
      "\"partial_rotary_factor\": 1.0, \"rope_parameters\": {\"rope_theta\": 1e4, "
      "\"partial_rotary_factor\": 1.0}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rotary_dim, 0);
}

// ---- refusals, each naming the field ---------------------------------------------------------

TEST(ConvertRopeTest, SpellingsThatDisagreeAreRefusedNamingBoth) {
  EXPECT_THAT(error("\"rope_theta\": 10000.0, \"rope_parameters\": {\"rope_theta\": 500000.0}"),
              AllOf(HasSubstr("cfg.json: field 'rope_theta' is 10000"),
                    HasSubstr("field 'rope_parameters.rope_theta' is 500000")));
  EXPECT_THAT(error(std::string(kLlama3Old) + ", \"rope_parameters\": {\"rope_theta\": 500000.0, "
                                              "\"rope_type\": \"default\"}"),
              AllOf(HasSubstr("field 'rope_scaling.type'"),
                    HasSubstr("field 'rope_parameters.rope_type' says 'default'")));
  EXPECT_THAT(
      error(std::string(kLlama3New) + ", " + absl::StrReplaceAll(kLlama3Old, {{"32.0", "8.0"}})),
      AllOf(HasSubstr("field 'rope_scaling.factor' is 8"),
            HasSubstr("field 'rope_parameters.factor' is 32")));
  EXPECT_THAT(error("\"rope_scaling\": {\"type\": \"linear\", \"rope_type\": \"llama3\", "
                    "\"factor\": 2}"),
              AllOf(HasSubstr("field 'rope_scaling.rope_type' is 'llama3'"),
                    HasSubstr("field 'rope_scaling.type' is 'linear'")));
  EXPECT_THAT(error("\"original_max_position_embeddings\": 4096, " + std::string(kLlama3New)),
              AllOf(HasSubstr("'original_max_position_embeddings' is 4096"),
                    HasSubstr("'rope_parameters.original_max_position_embeddings' is 8192")));
  EXPECT_THAT(error("\"rope_parameters\": {\"full_attention\": {\"rope_theta\": 1e6}, "
                    "\"sliding_attention\": {\"rope_theta\": 1e4}}"),
              HasSubstr("field 'rope_parameters.sliding_attention' differs from field "
                        "'rope_parameters.full_attention'"));
}

TEST(ConvertRopeTest, UnsupportedTypesAndKeysAreRefusedNamingTheField) {
  for (const char* type : {"yarn", "dynamic", "longrope", "su", "mrope", "proportional"})
    EXPECT_THAT(error(std::string("\"rope_parameters\": {\"rope_type\": \"") + type +
                      "\", \"factor\": 4.0}"),
                HasSubstr(std::string("field 'rope_parameters.rope_type' is '") + type + "'"));
  EXPECT_THAT(error("\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}"),
              HasSubstr("field 'rope_scaling.type' is 'yarn'"));
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 4.0, "
                    "\"attention_factor\": 1.2}"),
              HasSubstr("field 'rope_parameters.attention_factor' is not a RoPE parameter"));
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_type\": \"default\", \"mrope_section\": [1]}"),
              HasSubstr("field 'rope_parameters.mrope_section'"));
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_type\": \"default\", \"factor\": 4.0}"),
              HasSubstr("field 'rope_parameters.factor' is set, but rope_type 'default' does not "
                        "use it"));
  EXPECT_THAT(error("\"rope_scaling\": {\"type\": \"linear\"}"),
              HasSubstr("field 'rope_scaling.factor' is missing (rope_type 'linear' needs it)"));
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8, "
                    "\"low_freq_factor\": 1, \"high_freq_factor\": 4}"),
              HasSubstr("field 'rope_parameters.original_max_position_embeddings' is missing"));
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8, "
                    "\"low_freq_factor\": 4, \"high_freq_factor\": 4, "
                    "\"original_max_position_embeddings\": 8192}"),
              HasSubstr("field 'rope_parameters.high_freq_factor' is 4, must be > "
                        "low_freq_factor"));
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_theta\": -1}"),
              HasSubstr("field 'rope_parameters.rope_theta' is -1, must be > 0"));
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_theta\": \"1e6\"}"),
              HasSubstr("field 'rope_parameters.rope_theta' is \"1e6\" (string), not a number"));
  EXPECT_THAT(error("\"rope_parameters\": [1]"),
              HasSubstr("field 'rope_parameters' is [1] (array), not an object or null"));
  EXPECT_THAT(error("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}"),
              HasSubstr("field 'rope_scaling.factor' is 0, must be > 0"));
}

// transformers' Llama / Mistral / Qwen2 / Qwen3 rotate the whole head whatever the factor says.
TEST(ConvertRopeTest, PartialRotaryIsRefusedForTheSupportedArchitectures) {
  for (const char* arch :
       {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}) {
    auto c = parse("\"partial_rotary_factor\": 0.5", arch);
    ASSERT_FALSE(c.ok()) << arch;
    EXPECT_THAT(std::string(c.status().message()),
                HasSubstr("field 'partial_rotary_factor' is 0.5 (rotary_dim 4 of head_dim 8)"));
  }
  EXPECT_THAT(error("\"rope_parameters\": {\"rope_theta\": 1e4, \"partial_rotary_factor\": 0.25}"),
              HasSubstr("field 'rope_parameters.partial_rotary_factor' is 0.25"));
  EXPECT_THAT(error("\"partial_rotary_factor\": 1.5"),
              HasSubstr("field 'partial_rotary_factor' is 1.5, must be in (0, 1]"));
}

TEST(ConvertRopeTest, ParserHonoursPartialRotaryWhereTheArchitectureDoes) {
  const nlohmann::json j = nlohmann::json::parse(
      R"({"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5}})");
  auto r = parse_hf_rope(j, 64, /*partial_rotary=*/true, "cfg.json");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rotary_dim, 32);
  // int(80 * 0.3) = 24 (transformers truncates); int(64 * 0.3) = 19 is odd and refused.
  EXPECT_EQ(parse_hf_rope(nlohmann::json::parse(R"({"partial_rotary_factor": 0.3})"), 80, true,
                          "cfg.json")
                ->rotary_dim,
            24);
  EXPECT_THAT(std::string(parse_hf_rope(nlohmann::json::parse(R"({"partial_rotary_factor": 0.3})"),
                                        64, true, "cfg.json")
                              .status()
                              .message()),
              HasSubstr("rotary_dim = int(64 * 0.3) = 19 must be even"));
}

TEST(ConvertRopeTest, SlidingLayersInLayerTypesAreRefused) {
  EXPECT_EQ(error("\"layer_types\": [\"full_attention\", \"full_attention\"]"), "ok");
  EXPECT_THAT(error("\"layer_types\": [\"full_attention\", \"sliding_attention\"]"),
              HasSubstr("field 'layer_types' has \"sliding_attention\""));
}

// ---- writing ---------------------------------------------------------------------------------

TEST(ConvertRopeTest, ExportWritesBothSpellingsThatReadBack) {
  RopeConfig linear{1e6};
  linear.scaling.type = RopeScalingType::kLinear;
  linear.scaling.factor = 4;
  for (const RopeConfig& rope : {RopeConfig{500000.0}, llama3_32(), linear}) {
    nlohmann::ordered_json j;
    ASSERT_TRUE(write_hf_rope(rope, 8, false, j).ok());
    const nlohmann::json plain = nlohmann::json::parse(j.dump());
    EXPECT_EQ(plain.at("rope_theta").get<double>(), rope.theta);
    EXPECT_EQ(plain.at("rope_parameters").at("rope_type").get<std::string>(),
              rope_scaling_type_name(rope.scaling.type));
    EXPECT_EQ(plain.at("rope_scaling").is_null(), rope.scaling.type == RopeScalingType::kNone);
    auto back = parse_hf_rope(plain, 8, false, "exported");
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << j.dump();
    EXPECT_EQ(*back, rope);
    // Each spelling alone reads back too (what transformers 4 or 5 alone would see).
    for (const char* drop : {"rope_parameters", "rope_scaling"}) {
      nlohmann::json one = plain;
      one.erase(drop);
      auto r = parse_hf_rope(one, 8, false, "exported");
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(*r, rope) << "without " << drop;
    }
  }
  EXPECT_TRUE(nlohmann::json::parse([&] {
                nlohmann::ordered_json j;
                EXPECT_TRUE(write_hf_rope(llama3_32(), 8, false, j).ok());
                return j.dump();
              }())
                  .at("rope_scaling")
                  .at("original_max_position_embeddings")
                  .is_number_integer());
}

TEST(ConvertRopeTest, ExportRefusesPartialRotaryWithoutTheArchitectureForIt) {
  RopeConfig partial{1e4};
  partial.rotary_dim = 4;
  nlohmann::ordered_json j;
  EXPECT_THAT(std::string(write_hf_rope(partial, 8, false, j).message()),
              HasSubstr("partial rotary (rotary_dim 4 of head_dim 8)"));
  // Where it can be written, the factor reads back to the same rotary_dim, also when r / d is not
  // exact in binary (int(49 * (14 / 49)) would be 13).
  for (int64_t d : {8, 49 * 2, 96, 80}) {
    for (int64_t r = 2; r < d; r += 2) {
      partial.rotary_dim = r;
      nlohmann::ordered_json k;
      ASSERT_TRUE(write_hf_rope(partial, d, true, k).ok());
      auto back = parse_hf_rope(nlohmann::json::parse(k.dump()), d, true, "x");
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(back->rotary_dim, r) << "head_dim " << d;
    }
  }
}

// ---- the model config and the checkpoint -----------------------------------------------------

ModelConfig tiny() {
  ModelConfig c;
  c.vocab_size = 97;
  c.d_model = 32;
  c.n_layers = 1;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 48;
  return c;
}

TEST(ConvertRopeTest, ModelConfigJsonCarriesTheVariantsAndOldJsonIsPlain) {
  ModelConfig c = tiny();
  c.rope_theta = 500000.0;
  c.rope_scaling = llama3_32().scaling;
  c.rotary_dim = 4;
  auto back = ModelConfig::from_json(c.to_json());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rope(), c.rope());
  // A config written before the variants existed has neither key.
  ModelConfig old = tiny();
  const std::string old_json = old.to_json();
  EXPECT_EQ(old_json.find("rope_scaling"), std::string::npos);
  EXPECT_EQ(old_json.find("rotary_dim"), std::string::npos);
  auto plain = ModelConfig::from_json(old_json);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->plain_rope());
  c.rotary_dim = 6;
  c.rope_scaling.high_freq_factor = 0.5;
  EXPECT_THAT(std::string(c.validate().message()), HasSubstr("rope_scaling.high_freq_factor"));
}

std::string read_version(const std::string& path) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t g = H5Gopen2(f, "/config", H5P_DEFAULT);
  hid_t a = H5Aopen(g, "format_version", H5P_DEFAULT);
  hid_t t = H5Aget_type(a);
  std::string v(H5Tget_size(t), '\0');
  H5Aread(a, t, v.data());
  H5Tclose(t);
  H5Aclose(a);
  H5Gclose(g);
  H5Fclose(f);
  v.resize(std::strlen(v.c_str()));
  return v;
}

void write_version(const std::string& path, const std::string& v) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t g = H5Gopen2(f, "/config", H5P_DEFAULT);
  H5Adelete(g, "format_version");
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, v.size());
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(g, "format_version", t, s, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, t, v.data());
  H5Aclose(a);
  H5Sclose(s);
  H5Tclose(t);
  H5Gclose(g);
  H5Fclose(f);
}

Checkpoint checkpoint_of(const ModelConfig& c) {
  Checkpoint ck;
  ck.config = c;
  for (const ParamSpec& s : model_param_specs(c))
    ck.params[s.name] = Tensor::zeros(s.shape, DType::kF32);
  return ck;
}

TEST(ConvertRopeTest, CheckpointsWithVariantsAreVersionTwoAndPlainOnesStayVersionOne) {
  const std::string dir = std::string(::testing::TempDir());
  const std::string plain_path = dir + "/rope_plain.h5", scaled_path = dir + "/rope_llama3.h5";
  ASSERT_TRUE(save_checkpoint(plain_path, checkpoint_of(tiny())).ok());
  ModelConfig scaled = tiny();
  scaled.rope_theta = 500000.0;
  scaled.rope_scaling = llama3_32().scaling;
  ASSERT_TRUE(save_checkpoint(scaled_path, checkpoint_of(scaled)).ok());
  EXPECT_EQ(read_version(plain_path), "1");   // readable by builds before the variants
  EXPECT_EQ(read_version(scaled_path), "2");  // which refuse this one instead of running it plain
  auto back = load_checkpoint(scaled_path, true);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config.rope(), scaled.rope());
  ASSERT_TRUE(load_checkpoint(plain_path, true).ok());
  // A version that does not match the config is a damaged file.
  write_version(scaled_path, "1");
  auto bad = load_checkpoint(scaled_path, true);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("format version 1 does not match its config"));
  write_version(scaled_path, "4");
  EXPECT_THAT(std::string(load_checkpoint(scaled_path, true).status().message()),
              HasSubstr("checkpoint format version 4, this build reads 1 to 3"));
}

// The index branch's RoPE (msa.index_rotary_dim, not the paper's MSA) is version 3: a build that
// reads only versions 1-2 would run the index position-blind. A version-2 file that claims it is
// damaged; the field round-trips through the JSON and is absent from it when unused.
TEST(ConvertRopeTest, IndexBranchRopeCheckpointsAreVersionThree) {
  const std::string path = std::string(::testing::TempDir()) + "/rope_index.h5";
  ModelConfig c = tiny();
  c.attention = {AttentionKind::kMsa};
  c.msa.index_dim = 8;
  c.msa.index_rotary_dim = 4;
  ASSERT_TRUE(save_checkpoint(path, checkpoint_of(c)).ok());
  EXPECT_EQ(read_version(path), "3");
  auto back = load_checkpoint(path, true);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config.msa.index_rotary_dim, 4);
  write_version(path, "2");
  EXPECT_THAT(std::string(load_checkpoint(path, true).status().message()),
              HasSubstr("format version 2 does not match its config (version 3 holds it"));
  c.msa.index_rotary_dim = 0;
  EXPECT_EQ(c.to_json().find("index_rotary_dim"), std::string::npos);
  c.msa.index_rotary_dim = 3;
  EXPECT_THAT(std::string(c.validate().message()), HasSubstr("msa_index_rotary_dim"));
  c.msa.index_rotary_dim = 10;
  EXPECT_THAT(std::string(c.validate().message()), HasSubstr("msa_index_rotary_dim"));
}

// RoPE belongs to the weights: msa-train --init_from (and --resume) takes the checkpoint's theta,
// scaling and rotary dims, so a converted Llama 3.1 trains with its llama3 RoPE although
// msa-train has no scaling flags; an explicit --rope_theta that differs is refused before training.
TEST(ConvertRopeTest, InitFromTakesTheCheckpointsRope) {
  const std::string dir = std::string(::testing::TempDir()) + "/rope_init_from";
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  TrainProgramOptions o;
  o.model = tiny();
  o.model.n_layers = 1;
  o.attention_spec = "dense";
  o.device = "cpu";
  o.data = "synthetic:repeat";
  o.batch_size = 1;
  o.seq_len = 16;
  o.trainer.steps = 1;
  o.trainer.lr.total_steps = 1;
  o.trainer.quiet = true;
  o.checkpoint_dir = dir + "/run";
  ModelConfig scaled = o.model;
  scaled.rope_theta = 500000.0;
  scaled.rope_scaling = llama3_32().scaling;
  o.init_from = dir + "/llama3.h5";
  ASSERT_TRUE(save_checkpoint(o.init_from, checkpoint_of(scaled)).ok());
  // An explicit, different theta on --init_from replaces the checkpoint's (context extension)
  // and keeps its scaling.
  TrainProgramOptions explicit_theta = o;
  explicit_theta.explicit_rope_theta = true;
  explicit_theta.model.rope_theta = 8e6;
  explicit_theta.checkpoint_dir = dir + "/extended";
  ASSERT_TRUE(run_train_program(explicit_theta).ok());
  auto extended = load_checkpoint(explicit_theta.checkpoint_dir + "/ckpt-00000001.h5", true);
  ASSERT_TRUE(extended.ok()) << extended.status();
  EXPECT_EQ(extended->config.rope_theta, 8e6);
  EXPECT_TRUE(extended->config.rope_scaling == scaled.rope_scaling);
  // On --resume a different explicit theta is refused, naming both.
  TrainProgramOptions resume_other = explicit_theta;
  resume_other.init_from.clear();
  resume_other.resume = true;
  resume_other.model.rope_theta = 1e4;
  resume_other.trainer.steps = 2;
  resume_other.trainer.lr.total_steps = 2;
  absl::Status s = run_train_program(resume_other);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("--resume: "), HasSubstr("was trained with RoPE theta 8e+06"),
                    HasSubstr("--rope_theta=10000 was given")));
  // Without --rope_theta the run trains with the checkpoint's RoPE, and its checkpoint keeps it
  // (so --resume continues with it too).
  ASSERT_TRUE(run_train_program(o).ok());
  auto written = load_checkpoint(o.checkpoint_dir + "/ckpt-00000001.h5", true);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->config.rope_theta, 500000.0);
  EXPECT_TRUE(written->config.rope_scaling == scaled.rope_scaling);
  TrainProgramOptions resumed = o;
  resumed.init_from.clear();
  resumed.resume = true;
  resumed.trainer.steps = 2;
  resumed.trainer.lr.total_steps = 2;
  EXPECT_TRUE(run_train_program(resumed).ok());
}

}  // namespace
}  // namespace msa
