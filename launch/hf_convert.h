// Hugging Face <-> msa-train checkpoint conversion (docs/convert.md).
//
// Supported architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v bias),
// Qwen3ForCausalLM (q/k RMSNorm). Hugging Face stores q_proj / k_proj in the rotate-half RoPE
// layout that kernels/rope.h uses, so every weight is copied as is (no permutation). The RoPE
// fields (both of transformers' spellings) are read and written by launch/hf_rope_config.h.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "data/safetensors.h"
#include "model/model_config.h"

namespace msa {

// One row of the name table: "{l}" stands for the layer index.
struct HfNameMapping {
  const char* hf;
  const char* ours;
};
const std::vector<HfNameMapping>& hf_name_table();

// Our parameter name for a Hugging Face tensor name (nullopt-like: empty when unmapped).
std::string hf_to_our_name(const std::string& hf_name);
// The Hugging Face name of one of our (dense) parameters; empty for the MSA index branch.
std::string our_to_hf_name(const std::string& our_name);

struct HfCheckpoint {
  std::string architecture;
  ModelConfig config;                    // dense (attention list empty)
  std::map<std::string, Tensor> params;  // our names, f32
  StDtype dtype = StDtype::kBF16;        // the dtype of the source tensors
  // config.json fields the model does not use but generation does (bos/eos/pad token ids,
  // max_position_embeddings), as a JSON object's text ("" when none): recorded in the run's
  // checkpoints ("hf_config") and written back by --export_hf, whose defaults otherwise differ
  // (transformers' LlamaConfig: bos 1, eos 2, 2048 positions).
  std::string generation_fields;
};

// Parses config.json (refusing unsupported architectures and fields by name).
absl::StatusOr<HfCheckpoint> parse_hf_config(const std::string& config_json_text,
                                             const std::string& path);
// Reads <dir>/config.json and model.safetensors or the shards of model.safetensors.index.json.
absl::StatusOr<HfCheckpoint> read_hf_checkpoint(const std::string& dir);

// The Hugging Face source a checkpoint's run options record ("hf_architecture", "hf_dtype",
// "hf_config", as
// msa-convert --hf_dir writes them; absent ones left out): carried into what is made from the
// checkpoint (a conversion of it, a run started from it) so that an export keeps them.
std::map<std::string, std::string> hf_source_of(const std::string& run_json);

// Writes <dir>/config.json and <dir>/model.safetensors with the dense weights of `params` in
// `dtype` (MSA index weights are not part of the dense model and are left out).
// `generation_fields`: HfCheckpoint::generation_fields of the source, added to config.json.
absl::Status write_hf_checkpoint(const std::string& dir, const std::string& architecture,
                                 const ModelConfig& config,
                                 const std::map<std::string, Tensor>& params, StDtype dtype,
                                 const std::string& generation_fields = "");

}  // namespace msa
