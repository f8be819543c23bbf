// Device dispatch for kernels/rope.h, and the inverse-frequency table both devices share.
#include "kernels/rope.h"

#include <cmath>
#include <numbers>
#include <string>

#include "absl/strings/str_format.h"
#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/rope.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/dense_cuda.h"
#endif

namespace msa {

const char* rope_scaling_type_name(RopeScalingType type) {
  switch (type) {
    case RopeScalingType::kLinear:
      return "linear";
    case RopeScalingType::kLlama3:
      return "llama3";
    case RopeScalingType::kNone:
      break;
  }
  return "default";
}

int64_t rope_rotary_dim(const RopeConfig& rope, int64_t head_dim) {
  return rope.rotary_dim == 0 ? head_dim : rope.rotary_dim;
}

absl::Status validate_rope(const RopeConfig& rope, int64_t head_dim) {
  auto bad = [](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", field, why));
  };
  auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  if (!positive(rope.theta))
    return bad("rope_theta", absl::StrFormat("%g must be finite and > 0", rope.theta));
  if (head_dim % 2 != 0)  // the kernels rotate pairs of a head's dimensions
    return bad("head_dim", absl::StrFormat("%d must be even for RoPE", head_dim));
  const int64_t r = rope_rotary_dim(rope, head_dim);
  if (r < 2 || r % 2 != 0 || r > head_dim)
    return bad("rotary_dim",
               absl::StrFormat("%d must be even and in [2, head_dim = %d]", r, head_dim));
  const RopeScaling& s = rope.scaling;
  if (s.type == RopeScalingType::kNone) return absl::OkStatus();
  if (!positive(s.factor))
    return bad("rope_scaling.factor", absl::StrFormat("%g must be finite and > 0", s.factor));
  if (s.type == RopeScalingType::kLlama3) {
    if (!positive(s.low_freq_factor))
      return bad("rope_scaling.low_freq_factor",
                 absl::StrFormat("%g must be finite and > 0", s.low_freq_factor));
    if (!(std::isfinite(s.high_freq_factor) && s.high_freq_factor > s.low_freq_factor))
      return bad("rope_scaling.high_freq_factor",
                 absl::StrFormat("%g must be finite and > low_freq_factor (%g)", s.high_freq_factor,
                                 s.low_freq_factor));
    if (!positive(s.original_max_position))
      return bad("rope_scaling.original_max_position_embeddings",
                 absl::StrFormat("%g must be finite and > 0", s.original_max_position));
  }
  return absl::OkStatus();
}

std::vector<double> rope_inv_freq(const RopeConfig& rope, int64_t head_dim) {
  const absl::Status valid = validate_rope(rope, head_dim);
  MSA_CHECK(valid.ok(), "rope_inv_freq: %s", std::string(valid.message()));
  const int64_t r = rope_rotary_dim(rope, head_dim);
  const RopeScaling& s = rope.scaling;
  std::vector<double> f(r / 2);
  for (int64_t i = 0; i < r / 2; ++i) {
    // transformers' form, 1 / theta^(2i / r), so that both round alike.
    const double plain =
        1.0 / std::pow(rope.theta, static_cast<double>(2 * i) / static_cast<double>(r));
    switch (s.type) {
      case RopeScalingType::kNone:
        f[i] = plain;
        break;
      case RopeScalingType::kLinear:
        f[i] = plain / s.factor;
        break;
      case RopeScalingType::kLlama3: {
        const double wavelen = 2 * std::numbers::pi / plain;
        const double low_freq_wavelen = s.original_max_position / s.low_freq_factor;
        const double high_freq_wavelen = s.original_max_position / s.high_freq_factor;
        if (wavelen < high_freq_wavelen) {
          f[i] = plain;
        } else if (wavelen > low_freq_wavelen) {
          f[i] = plain / s.factor;
        } else {
          const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                                (s.high_freq_factor - s.low_freq_factor);
          f[i] = (1 - smooth) * plain / s.factor + smooth * plain;
        }
        break;
      }
    }
  }
  return f;
}

namespace {

// Checks shared by forward and backward; `in` is x (forward) or dy (backward).
void check_rope_args(const Tensor& in, const Tensor& out, const RopeConfig& rope, const char* op) {
  MSA_CHECK(in.ndim() == 4, "%s: input %s must be [batch, T, n_heads, d]", op, in.describe());
  MSA_CHECK(in.size(3) % 2 == 0, "%s: head dim %d must be even", op, in.size(3));
  const absl::Status valid = validate_rope(rope, in.size(3));
  MSA_CHECK(valid.ok(), "%s: %s", op, std::string(valid.message()));
  check_shape(out, in.shape(), op);
  check_same_device(in, out, "input", "output");
}

void rope_apply(const Tensor& in, const RopeConfig& rope, Tensor& out, bool inverse,
                int64_t position_offset, const char* op) {
  check_rope_args(in, out, rope, op);
  MSA_CHECK(position_offset >= 0, "%s: position offset %d must be >= 0", op, position_offset);
  const std::vector<double> inv_freq = rope_inv_freq(rope, in.size(3));
  if (in.is_cuda()) {
#if MSA_HAS_CUDA
    check_dtype(in, DType::kBF16, op);
    check_dtype(out, DType::kBF16, op);
    MSA_CHECK(static_cast<int64_t>(inv_freq.size()) <= kRopeMaxCudaPairs,
              "%s: rotary_dim %d exceeds the CUDA kernel's %d", op, 2 * inv_freq.size(),
              2 * kRopeMaxCudaPairs);
    cuda::rope_rotate(in, inv_freq, inverse, position_offset, out);
#endif
    return;
  }
  cpu::dispatch_floating(in.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    check_dtype(out, in.dtype(), op);
    cpu::rope_rotate<T>(in.data<T>(), out.data<T>(), in.size(0), in.size(1), in.size(2), in.size(3),
                        inv_freq.data(), static_cast<int64_t>(inv_freq.size()), inverse,
                        position_offset);
  });
}

}  // namespace

void rope_forward(const Tensor& x, const RopeConfig& rope, Tensor& y, int64_t position_offset) {
  rope_apply(x, rope, y, /*inverse=*/false, position_offset, "rope_forward");
}

void rope_backward(const Tensor& dy, const RopeConfig& rope, Tensor& dx, int64_t position_offset) {
  rope_apply(dy, rope, dx, /*inverse=*/true, position_offset, "rope_backward");
}

}  // namespace msa
