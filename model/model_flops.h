// Model FLOPs of a training step (what MFU divides by the peak): the matmul weights' 6 N per
// token plus causal attention's and the MSA index branch's, recomputation not counted.
#pragma once

#include <cstdint>

#include "model/model_config.h"

namespace msa {

// Weights that multiply activations (every projection and the LM head; not the embedding
// lookup, unless tied, when the table is the LM head): the N of "6N FLOPs per token".
int64_t matmul_params(const ModelConfig& c);

// Training FLOPs per token at sequence length T: 6 N (forward 2N, backward 4N) plus attention,
// 12 H d per attended key and layer (QK^T and PV, 2 d FLOPs each forward, twice that backward:
// 4 H d x 3), with the exact mean of the keys a causal query attends (mean_attended_keys: (T+1)/2
// for dense layers; for MSA layers the local block's tokens plus up to k - 1 full earlier blocks),
// and for MSA layers the index branch's scores, 2 G d_I per earlier token (forward only).
// Recomputation is not counted (model FLOPs).
double mean_attended_keys(const ModelConfig& c, AttentionKind kind, int64_t T);
double train_flops_per_token(const ModelConfig& c, int64_t T);

}  // namespace msa
