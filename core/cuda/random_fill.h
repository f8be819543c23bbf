// Device-side random fills for benchmark inputs: the counter-based draws of core/rng.h computed
// where the tensor lives, so billions of elements take milliseconds instead of minutes on the
// host. Not bit-identical to fill_normal / fill_uniform (device logf / cosf), which is why those
// keep drawing on the host.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace msa::cuda {

enum class RandomKind { kNormal, kUniform };
bool can_fill_on_device(DType dtype);
// Element i = mean + std * rng_normal(seed, i), or lo + (hi - lo) * (1 - rng_uniform(seed, i)).
void random_fill_on_device(void* data, DType dtype, int64_t n, RandomKind kind, uint64_t seed,
                           float a, float b);

}  // namespace msa::cuda
