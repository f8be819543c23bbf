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

}  // namespace msa
