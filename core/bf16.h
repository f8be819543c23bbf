// bfloat16 storage type and conversions (round to nearest even), identical on host and device.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/host_device.h"

namespace msa {

struct bf16 {
  uint16_t bits;
};

MSA_HOST_DEVICE uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

MSA_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

MSA_HOST_DEVICE bf16 float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

MSA_HOST_DEVICE float bf16_to_float(bf16 h) { return bits_float(static_cast<uint32_t>(h.bits) << 16); }

// Round to nearest even straight from a double. Through a float by plain rounding it rounds twice
// (1.00390625 + 2^-40 came out 1.0, not 1.0078125); the float here is rounded to odd instead
// (truncated, its last bit set when inexact), which makes the second rounding the correct one.
inline bf16 double_to_bf16(double d) {
  if (!(std::abs(d) <= 3.4028234663852886e38)) return float_to_bf16(static_cast<float>(d));
  float f = static_cast<float>(d);
  if (std::abs(static_cast<double>(f)) > std::abs(d)) f = std::nextafter(f, 0.0f);  // truncate
  if (static_cast<double>(f) != d) f = bits_float(float_bits(f) | 1u);
  return float_to_bf16(f);
}

}  // namespace msa
