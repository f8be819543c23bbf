// The model shapes msa-bench dense/step measure (--model, --layers, and for MSA the --block_size,
// --topk, --index_dim flags), and the FLOP count MFU uses.
#pragma once

#include <cstdint>
#include <string>

#include "model/model_config.h"

namespace msa::bench {

// Exits with a message on an unknown preset.
ModelConfig preset_model(const std::string& name, bool all_msa);

// Weights that multiply activations (every projection and the LM head; not the embedding
// lookup, unless tied, when the table is the LM head): the N of "6N FLOPs per token".
int64_t matmul_params(const ModelConfig& c);

// Training FLOPs per token at sequence length T: 6 N (forward 2N, backward 4N) plus attention,
// 6 H d per attended key and layer (QK^T and PV forward, 2 flops x d each, x3 with the
// backward), with T/2 keys per query on average for causal dense layers and, for MSA layers, the
// keys of at most k blocks of B (min(T/2, k B)), and for MSA layers the index branch's scores,
// 2 G d_I per earlier token (forward only). Recomputation is not counted (model FLOPs).
double train_flops_per_token(const ModelConfig& c, int64_t T);

}  // namespace msa::bench
