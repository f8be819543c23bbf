// msa-convert: dense GQA checkpoints (Hugging Face or ours) -> msa-train MSA checkpoints, and
// back to Hugging Face safetensors.
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/number_text.h"
#include "core/status.h"
#include "launch/available_memory.h"
#include "launch/hf_convert.h"
#include "launch/hf_rope_config.h"
#include "launch/program_usage.h"
#include "model/parameters.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"

ABSL_FLAG(std::string, hf_dir, "",
          "Input: a Hugging Face model directory (config.json + model.safetensors or "
          "model.safetensors.index.json shards).");
ABSL_FLAG(std::string, checkpoint, "",
          "Input: one of our HDF5 checkpoints (a dense one to convert, or any to --export_hf).");
ABSL_FLAG(std::string, output, "", "Output: the converted msa-train HDF5 checkpoint.");
ABSL_FLAG(std::string, msa_layers, "all",
          "Which layers become MSA: 'all', 'none', or a comma-separated list of layer indices.");
ABSL_FLAG(int, msa_block_size, 128, "MSA block size B.");
ABSL_FLAG(int, msa_topk, 16, "MSA blocks per query and KV group, the local one included.");
ABSL_FLAG(int, msa_index_dim, 128,
          "MSA index dimension d_I (W_IQ: [G * d_I, D], one index query head per KV group; "
          "W_IK: [d_I, D], one index key head shared by the groups).");
ABSL_FLAG(int, msa_index_rotary_dim, 0,
          "Not the paper's MSA: the leading dims of the index heads that rotate with the model's "
          "RoPE frequencies (0: none, the paper's position-blind index).");
ABSL_FLAG(double, msa_index_loss_weight, 1.0, "Weight of the index distillation loss.");
ABSL_FLAG(uint64_t, seed, 1234, "Seed of the index-branch initialization.");
ABSL_FLAG(std::string, export_hf, "",
          "Instead of converting: write the dense weights of --checkpoint to this directory as "
          "Hugging Face safetensors + config.json.");
ABSL_FLAG(std::string, export_dtype, "auto",
          "--export_hf tensor dtype: bf16, f16, f32, or auto (the dtype the model was converted "
          "from; bf16 if unknown).");

namespace {

absl::StatusOr<std::vector<msa::AttentionKind>> parse_msa_layers(const std::string& spec, int n) {
  std::vector<msa::AttentionKind> kinds(n, msa::AttentionKind::kDense);
  if (spec == "all") return std::vector<msa::AttentionKind>(n, msa::AttentionKind::kMsa);
  if (spec == "none") return kinds;
  // Every entry a layer index, each once: an empty list (or an empty entry) from a typo gave an
  // all-dense "conversion".
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    int l;
    if (!absl::SimpleAtoi(part, &l) || l < 0 || l >= n)
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --msa_layers: '%s' is not a layer index in [0, %d) (give 'all', 'none' or "
          "indices such as 0,2,5)",
          std::string(part), n));
    if (kinds[l] == msa::AttentionKind::kMsa)
      return absl::InvalidArgumentError(
          absl::StrFormat("invalid --msa_layers: layer %d is listed twice", l));
    kinds[l] = msa::AttentionKind::kMsa;
  }
  return kinds;
}

// The msa-train flags that build `c` (msa-train's --init_from takes the weights, not the sizes; the
// RoPE variant it adopts from the file).
std::string train_model_flags(const msa::ModelConfig& c) {
  std::vector<std::string> kinds;
  for (int l = 0; l < c.n_layers; ++l) kinds.push_back(msa::attention_kind_name(c.layer_kind(l)));
  const bool uniform = std::all_of(kinds.begin(), kinds.end(),
                                   [&](const std::string& k) { return k == kinds.front(); });
  std::string flags = absl::StrFormat(
      "--vocab_size=%d --d_model=%d --n_layers=%d --n_heads=%d --n_kv_heads=%d --head_dim=%d "
      "--ffn_dim=%d --norm_eps=%s --attention=%s --msa_block_size=%d --msa_topk=%d "
      "--msa_index_dim=%d",
      c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim,
      msa::shortest_text(c.norm_eps), uniform ? kinds.front() : absl::StrJoin(kinds, ","),
      c.msa.block_size, c.msa.topk, c.msa.index_dim);
  if (c.msa.index_rotary_dim != 0)
    absl::StrAppend(&flags, " --msa_index_rotary_dim=", c.msa.index_rotary_dim);
  if (c.tied_embeddings) absl::StrAppend(&flags, " --tied_embeddings");
  if (c.qkv_bias) absl::StrAppend(&flags, " --qkv_bias");
  if (c.qk_norm) absl::StrAppend(&flags, " --qk_norm");
  if (c.msa.index_loss_weight != 1.0)
    absl::StrAppend(&flags,
                    " --msa_index_loss_weight=", msa::shortest_text(c.msa.index_loss_weight));
  return flags;
}

absl::Status export_hf() {
  const std::string input = absl::GetFlag(FLAGS_checkpoint);
  if (input.empty()) return absl::InvalidArgumentError("invalid --export_hf: needs --checkpoint");
  // The conversion's flags do nothing in an export: given, they were meant for a conversion.
  const std::vector<std::string> stray = msa::flags_set(
      {&absl::GetFlagReflectionHandle(FLAGS_hf_dir), &absl::GetFlagReflectionHandle(FLAGS_output),
       &absl::GetFlagReflectionHandle(FLAGS_msa_layers),
       &absl::GetFlagReflectionHandle(FLAGS_msa_block_size),
       &absl::GetFlagReflectionHandle(FLAGS_msa_topk),
       &absl::GetFlagReflectionHandle(FLAGS_msa_index_dim),
       &absl::GetFlagReflectionHandle(FLAGS_msa_index_rotary_dim),
       &absl::GetFlagReflectionHandle(FLAGS_msa_index_loss_weight),
       &absl::GetFlagReflectionHandle(FLAGS_seed)});
  if (!stray.empty())
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid %s: %s a conversion, and --export_hf only writes --checkpoint's dense weights "
        "(run the conversion and the export as two commands)",
        absl::StrJoin(stray, ", "), stray.size() == 1 ? "it belongs to" : "they belong to"));
  MSA_ASSIGN_OR_RETURN(msa::Checkpoint ckpt, msa::load_checkpoint(input, /*weights_only=*/true));
  const std::map<std::string, std::string> source = msa::hf_source_of(ckpt.run_json);
  const auto recorded = [&](const char* key, const char* fallback) {
    const auto it = source.find(key);
    return it != source.end() ? it->second : std::string(fallback);
  };
  const std::string arch = recorded("hf_architecture", ckpt.config.qk_norm    ? "Qwen3ForCausalLM"
                                                       : ckpt.config.qkv_bias ? "Qwen2ForCausalLM"
                                                                              : "LlamaForCausalLM");
  const std::string source_dtype = recorded("hf_dtype", "BF16");
  // The architecture must hold what the model has: transformers drops tensors its config does
  // not expect (q/k/v biases under Qwen3, q/k norms under Qwen2), and no supported one has both.
  const bool wants_bias = arch == "Qwen2ForCausalLM", wants_norm = arch == "Qwen3ForCausalLM";
  if (ckpt.config.qkv_bias != wants_bias || ckpt.config.qk_norm != wants_norm)
    return absl::FailedPreconditionError(
        absl::StrFormat("invalid --export_hf: %s's model has %s; %s", input,
                        ckpt.config.qkv_bias && ckpt.config.qk_norm ? "q/k/v biases and q/k norms"
                        : ckpt.config.qkv_bias                      ? "q/k/v biases"
                        : ckpt.config.qk_norm                       ? "q/k norms"
                                              : "neither q/k/v biases nor q/k norms",
                        ckpt.config.qkv_bias && ckpt.config.qk_norm
                            ? "no Hugging Face architecture msa-convert writes has both"
                            : "the architecture its run recorded, " + arch + ", does not"));
  std::string flag = absl::GetFlag(FLAGS_export_dtype);
  if (flag == "auto") {
    if (!source.count("hf_dtype"))
      std::fprintf(stderr,
                   "msa-convert: %s records no Hugging Face source dtype: --export_dtype=auto "
                   "writes bf16 (give --export_dtype=f32 or f16 to choose)\n",
                   input.c_str());
    flag = source_dtype == "F32" ? "f32" : source_dtype == "F16" ? "f16" : "bf16";
  }
  msa::StDtype dtype;
  if (flag == "bf16") {
    dtype = msa::StDtype::kBF16;
  } else if (flag == "f16") {
    dtype = msa::StDtype::kF16;
  } else if (flag == "f32") {
    dtype = msa::StDtype::kF32;
  } else {
    return absl::InvalidArgumentError("invalid --export_dtype: use bf16, f16, f32 or auto");
  }
  const std::string dir = absl::GetFlag(FLAGS_export_hf);
  MSA_RETURN_IF_ERROR(msa::write_hf_checkpoint(dir, arch, ckpt.config, ckpt.params, dtype,
                                               recorded("hf_config", "")));
  std::printf(
      "msa-convert: wrote %s/config.json and model.safetensors (%s, %s; MSA index weights "
      "left out)\n",
      dir.c_str(), arch.c_str(), flag.c_str());
  return absl::OkStatus();
}

absl::Status convert() {
  const std::string hf_dir = absl::GetFlag(FLAGS_hf_dir), input = absl::GetFlag(FLAGS_checkpoint);
  const std::string output = absl::GetFlag(FLAGS_output);
  if (hf_dir.empty() == input.empty())
    return absl::InvalidArgumentError("give exactly one input: --hf_dir or --checkpoint");
  if (output.empty()) return absl::InvalidArgumentError("invalid --output: required");
  // A conversion never replaces a file: the output path may be its own input or a run's
  // checkpoint (the rename at the end of the save would have taken its place silently).
  if (struct stat st; ::lstat(output.c_str(), &st) == 0)  // a dangling link too
    return absl::FailedPreconditionError(absl::StrFormat(
        "invalid --output: '%s' already exists (msa-convert never overwrites a file: remove it or "
        "choose another path)",
        output));
  msa::Checkpoint out;
  nlohmann::json run;
  if (!hf_dir.empty()) {
    std::fprintf(stderr, "msa-convert: reading %s\n", hf_dir.c_str());
    MSA_ASSIGN_OR_RETURN(msa::HfCheckpoint hf, msa::read_hf_checkpoint(hf_dir));
    std::fprintf(stderr, "msa-convert: %s, RoPE %s\n", hf.architecture.c_str(),
                 msa::describe_rope(hf.config.rope(), hf.config.head_dim).c_str());
    out.config = hf.config;
    out.params = std::move(hf.params);
    run["converted_from"] = hf_dir;
    run["hf_architecture"] = hf.architecture;
    run["hf_dtype"] = msa::st_dtype_name(hf.dtype);
    if (!hf.generation_fields.empty()) run["hf_config"] = hf.generation_fields;
  } else {
    MSA_ASSIGN_OR_RETURN(msa::Checkpoint in, msa::load_checkpoint(input, /*weights_only=*/true));
    if (in.config.any_msa())
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: already has MSA layers; convert a dense checkpoint", input));
    out.config = in.config;
    out.params = std::move(in.params);
    run["converted_from"] = input;
    // The Hugging Face source, when the dense checkpoint came from one (msa-convert --hf_dir,
    // then msa-train): an export keeps its architecture and dtype.
    for (const auto& [key, value] : msa::hf_source_of(in.run_json)) run[key] = value;
  }
  MSA_ASSIGN_OR_RETURN(out.config.attention,
                       parse_msa_layers(absl::GetFlag(FLAGS_msa_layers), out.config.n_layers));
  out.config.msa.block_size = absl::GetFlag(FLAGS_msa_block_size);
  out.config.msa.topk = absl::GetFlag(FLAGS_msa_topk);
  out.config.msa.index_dim = absl::GetFlag(FLAGS_msa_index_dim);
  out.config.msa.index_rotary_dim = absl::GetFlag(FLAGS_msa_index_rotary_dim);
  out.config.msa.index_loss_weight = absl::GetFlag(FLAGS_msa_index_loss_weight);
  MSA_RETURN_IF_ERROR(out.config.validate());
  // The index branch of each MSA layer (W_IQ [G * d_I, D], W_IK [d_I, D]) starts from the
  // model's own random initialization; the index warm-up (dense attention, msa-train's
  // --dense_attention_steps, or --index_warmup_steps with the backbone frozen) fits it to the
  // model's attention before sparse training begins.
  // Only the index branch is allocated (each tensor's values depend on its name and the seed
  // alone, as msa-train's): a second copy of the whole model doubled the host memory.
  std::vector<msa::ParamSpec> index_specs;
  double index_bytes = 0;
  for (const msa::ParamSpec& s : msa::model_param_specs(out.config))
    if (s.index_branch) {
      index_specs.push_back(s);
      index_bytes += 4.0 * static_cast<double>(msa::shape_numel(s.shape));
    }
  if (const std::optional<double> free = msa::host_available_bytes(); free && index_bytes > *free)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "invalid --msa_index_dim: %d gives index-branch weights of %.1f GiB, more than the %.1f "
        "GiB of host memory available",
        out.config.msa.index_dim, index_bytes / 1073741824.0, *free / 1073741824.0));
  msa::ParameterSet fresh =
      msa::ParameterSet::allocate(index_specs, msa::DType::kF32, msa::Device::kCPU);
  fresh.initialize(absl::GetFlag(FLAGS_seed));
  int n_index = 0;
  for (const msa::ParamSpec& s : index_specs) {
    out.params[s.name] = fresh.at(s.name).value;
    ++n_index;
  }
  out.run_json = run.dump();
  MSA_RETURN_IF_ERROR(msa::save_checkpoint(output, out, /*replace=*/false));
  int n_msa = 0;
  for (auto k : out.config.attention) n_msa += k == msa::AttentionKind::kMsa;
  std::printf(
      "msa-convert: wrote %s: %d layers (%d MSA, B=%d, k=%d, d_I=%d), %zu dense tensors "
      "copied, %d index tensors initialized\n",
      output.c_str(), out.config.n_layers, n_msa, out.config.msa.block_size, out.config.msa.topk,
      out.config.msa.index_dim, out.params.size() - n_index, n_index);
  std::printf(
      "msa-convert: continue with: msa-train --flagfile=launch/recipes/convert_continue.flags "
      "--init_from=%s %s --data=...\n",
      output.c_str(), train_model_flags(out.config).c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Converts a dense GQA checkpoint into an MSA model for msa-train, or exports ours back.\n"
      "  msa-convert --hf_dir=Llama-3.2-1B --output=llama_msa.h5 [--msa_layers=all]\n"
      "  msa-convert --checkpoint=dense.h5 --output=msa.h5\n"
      "  msa-convert --checkpoint=msa.h5 --export_hf=out_dir\n"
      "Then: msa-train --init_from=llama_msa.h5 --flagfile=launch/recipes/convert_continue.flags\n"
      "      with the model's sizes, which msa-convert prints when it is done (--init_from takes "
      "the weights, not the sizes)");
  if (msa::has_stray_arguments(absl::ParseCommandLine(argc, argv), 1, "msa-convert")) return 1;
  const absl::Status s = absl::GetFlag(FLAGS_export_hf).empty() ? convert() : export_hf();
  if (!s.ok()) {
    std::fprintf(stderr, "msa-convert: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
