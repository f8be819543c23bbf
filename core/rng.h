// Counter-based RNG (Philox-4x32-10). A value depends only on (seed, counter), never on call
// order or thread layout, so CPU and GPU produce the same numbers for the same seed/offset.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace msa {

struct Philox4 {
  uint32_t v[4];
};

MSA_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Four 32-bit random words for the 128-bit counter (counter, 0) under the 64-bit key seed.
MSA_HOST_DEVICE Philox4 philox4x32(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in (0, 1]: never 0, so log() is safe.
MSA_HOST_DEVICE float uniform_from_bits(uint32_t x) {
  return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

// The i-th uniform of stream `seed`.
MSA_HOST_DEVICE float rng_uniform(uint64_t seed, uint64_t i) {
  return uniform_from_bits(philox4x32(seed, i).v[0]);
}

// The i-th standard normal of stream `seed` (Box-Muller on one Philox draw).
MSA_HOST_DEVICE float rng_normal(uint64_t seed, uint64_t i) {
  Philox4 r = philox4x32(seed, i);
  float u1 = uniform_from_bits(r.v[0]);
  float u2 = uniform_from_bits(r.v[1]);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

// Derives an independent stream seed from a parent seed and a label (e.g. a parameter index).
MSA_HOST_DEVICE uint64_t rng_substream(uint64_t seed, uint64_t label) {
  Philox4 r = philox4x32(seed ^ 0x5DEECE66DULL, label);
  return (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
}

}  // namespace msa
