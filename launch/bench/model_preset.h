// The model shapes msa-bench dense/step measure (--model, --layers, and for MSA the --block_size,
// --topk, --index_dim flags); model/model_flops.h counts their FLOPs.
#pragma once

#include <cstdint>
#include <string>

#include "model/model_config.h"

namespace msa::bench {

// Exits with a message on an unknown preset.
ModelConfig preset_model(const std::string& name, bool all_msa);

}  // namespace msa::bench
