// A block's RMSNorm of its input, computed by the caller: the transformer fuses each residual add
// with the norm that reads its result (add_rmsnorm_forward), one pass over the residual stream
// instead of two.
#pragma once

#include "core/tensor.h"

namespace msa {

struct NormedInput {
  Tensor xn;    // [N, D]: RMSNorm(x) under the block's own norm weight
  Tensor rstd;  // [N]: its 1/rms (f32 on the GPU, the compute dtype on the CPU)
};

// sum = a + b (a residual add) and sum's RMSNorm under `weight`, for the block that reads sum
// next; one pass on the GPU.
NormedInput add_and_normalize(const Tensor& a, const Tensor& b, const Tensor& weight, double eps,
                              Tensor& sum);

// A block's normalized input x [N, D]: `normed` when the caller computed it (its shapes checked,
// `op` naming the block in the message), else x's RMSNorm under `weight`, computed here.
NormedInput normalize_block_input(const Tensor& x, const Tensor& weight, double eps,
                                  const NormedInput* normed, const char* op);

}  // namespace msa
