// The MLP half of a decoder layer: RMSNorm -> gate/up projections -> SwiGLU -> down projection.
// The residual add is the caller's.
#pragma once

#include "core/tensor.h"
#include "model/model_config.h"
#include "model/normed_input.h"
#include "model/parameters.h"

namespace msa {

struct MlpActivations {
  Tensor xn, rstd;   // normalized input [N, D], 1/rms [N]
  Tensor gate, up;   // [N, F]
  Tensor h;          // silu(gate) * up [N, F]
};

// x [N, D] -> y [N, D] (before the residual add). `normed`: x's RMSNorm under mlp_norm, when the
// caller computed it (else the block does).
void mlp_block_forward(const ModelConfig& config, int layer, ParameterSet& params, const Tensor& x,
                       MlpActivations& act, Tensor& y, const NormedInput* normed = nullptr);

// dy [N, D] -> dx [N, D] through this block only, plus `skip_grad` when defined (the residual
// path's gradient, added in RMSNorm's backward pass); parameter gradients accumulate.
void mlp_block_backward(const ModelConfig& config, int layer, ParameterSet& params,
                        const Tensor& x, const Tensor& dy, MlpActivations& act, Tensor& dx,
                        const Tensor& skip_grad = Tensor());

}  // namespace msa
