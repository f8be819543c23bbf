// Device-side dtype conversion for Tensor::to(DType) on CUDA tensors (f32 <-> bf16), so weight
// refreshes and gradient casts never round-trip through the host.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace msa::cuda {

bool can_convert_on_device(DType from, DType to);
// Converts n elements on the current stream (default stream).
void convert_on_device(const void* src, DType from, void* dst, DType to, int64_t n);

}  // namespace msa::cuda
