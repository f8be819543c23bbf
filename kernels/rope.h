// Rotary position embedding, "rotate half" convention (Hugging Face Llama/Qwen). With r the rotary
// dimension (r <= d, even) and f_i the inverse frequencies of rope_inv_freq, for i < r/2:
//   y[i]       = x[i] cos(p f_i) - x[i + r/2] sin(p f_i)
//   y[i + r/2] = x[i + r/2] cos(p f_i) + x[i] sin(p f_i),
// and y[j] = x[j] for r <= j < d (partial rotary: the tail of each head passes through), with p
// the token's position in its sequence (0..T-1).
//
// The frequencies follow transformers' modeling_rope_utils: plain f_i = theta^(-2i/r); 'linear'
// divides them by `factor` (positions / factor); 'llama3' (Llama 3.1) divides the low frequencies
// (wavelength 2 pi / f_i above original_max_position / low_freq_factor) by `factor`, keeps the high
// ones (wavelength below original_max_position / high_freq_factor) and interpolates smoothly
// between. None of these scale the attention logits (transformers' attention_scaling stays 1).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/tensor.h"

namespace msa {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

// "default", "linear", "llama3": transformers' rope_type names.
const char* rope_scaling_type_name(RopeScalingType type);

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;                  // linear, llama3
  double low_freq_factor = 1.0;         // llama3
  double high_freq_factor = 4.0;        // llama3
  double original_max_position = 8192;  // llama3 (original_max_position_embeddings)

  bool operator==(const RopeScaling&) const = default;
};

struct RopeConfig {
  RopeConfig() = default;
  explicit RopeConfig(double theta, RopeScaling scaling = {}, int64_t rotary_dim = 0)
      : theta(theta), scaling(scaling), rotary_dim(rotary_dim) {}

  double theta = 10000.0;
  RopeScaling scaling;
  int64_t rotary_dim = 0;  // the leading dims of each head that rotate; 0: the whole head

  bool operator==(const RopeConfig&) const = default;
};

// The rotary dimension for heads of `head_dim` (rope.rotary_dim, or head_dim when it is 0).
int64_t rope_rotary_dim(const RopeConfig& rope, int64_t head_dim);

// OK, or InvalidArgument "<field>: <why>" naming the field ("rope_theta", "rope_scaling.factor",
// "rotary_dim", ...) that cannot be used with heads of `head_dim`: theta finite and > 0;
// rotary_dim even, in [2, head_dim] (or 0); factor finite and > 0; llama3's low_freq_factor > 0,
// high_freq_factor > low_freq_factor, original_max_position > 0.
absl::Status validate_rope(const RopeConfig& rope, int64_t head_dim);

// f_i for i < rotary_dim / 2, in double (see the top of this file). The config must be valid.
std::vector<double> rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

// x, y [batch, T, n_heads, d], d even. y may alias x (in place). The CUDA path (bf16) takes
// rotary_dim / 2 <= kRopeMaxCudaPairs. Token i of each sequence is at position
// position_offset + i (> 0: a context-parallel shard of a longer sequence).
void rope_forward(const Tensor& x, const RopeConfig& rope, Tensor& y, int64_t position_offset = 0);

// dx = R^T dy; dx may alias dy.
void rope_backward(const Tensor& dy, const RopeConfig& rope, Tensor& dx,
                   int64_t position_offset = 0);

inline constexpr int64_t kRopeMaxCudaPairs = 256;

}  // namespace msa
