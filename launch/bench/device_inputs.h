// Benchmark inputs shared by the msa-bench tables (CUDA builds only): N(0, 1) tensors drawn on
// the device, since at 1M tokens the inputs are billions of elements (minutes on the host).
#pragma once

#include <cstdint>

#include "core/cuda/random_fill.h"
#include "core/tensor.h"

namespace msa::bench {

inline Tensor random_device(const Shape& s, uint64_t seed, DType dt = DType::kBF16) {
  Tensor t = Tensor::empty(s, dt, Device::kCUDA);
  cuda::random_fill_on_device(t.raw_data(), t.dtype(), t.numel(), cuda::RandomKind::kNormal, seed,
                              0.0f, 1.0f);
  return t;
}

}  // namespace msa::bench
