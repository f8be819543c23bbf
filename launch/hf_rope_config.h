// The RoPE fields of a Hugging Face config.json, in both of transformers' spellings
// (docs/convert.md, "RoPE"):
//   transformers 4: top-level `rope_theta`, `rope_scaling` {"type" or "rope_type", "factor", ...},
//                   `partial_rotary_factor`, `original_max_position_embeddings`;
//   transformers 5: `rope_parameters` {"rope_theta", "rope_type", "factor", ...,
//                   "partial_rotary_factor"}, possibly nested per attention type
//                   ({"full_attention": {...}, "sliding_attention": {...}}).
// Every value present is used or refused: a value given in several places must agree (else the
// error names both fields), an unknown rope type or key is refused by name, and nothing present is
// replaced by a default.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "kernels/rope.h"
#include "nlohmann/json.hpp"

namespace msa {

// `config`: the whole config.json object. `partial_rotary`: whether the architecture's
// transformers implementation honours partial_rotary_factor (Llama, Mistral, Qwen2 and Qwen3 rotate
// the whole head whatever it says, so for them a factor other than 1 is refused). Errors are
// InvalidArgument "<path>: field '<name>' ...".
absl::StatusOr<RopeConfig> parse_hf_rope(const nlohmann::json& config, int64_t head_dim,
                                         bool partial_rotary, const std::string& path);

// Writes `rope` in both spellings, which agree, so transformers 4 and 5 (and parse_hf_rope) read
// the same model: top-level rope_theta and rope_scaling (null when unscaled), and rope_parameters.
// Partial rotary cannot be written for an architecture without it (`partial_rotary` false):
// InvalidArgument.
// One line for logs: "theta 500000, llama3 (factor 32, low 1, high 4, original 8192), rotary
// 64/64".
std::string describe_rope(const RopeConfig& rope, int64_t head_dim);

absl::Status write_hf_rope(const RopeConfig& rope, int64_t head_dim, bool partial_rotary,
                           nlohmann::ordered_json& config);

}  // namespace msa
