// FNV-1a, 64 bits: the hash of checkpoint checksums, parameter seeds, data fingerprints.
#pragma once

#include <cstdint>
#include <string_view>

namespace msa {

inline constexpr uint64_t kFnv1aBasis = 0xcbf29ce484222325ULL;

// `h` carried over `bytes`: fnv1a64(a + b) == fnv1a64_update(fnv1a64(a), b).
inline uint64_t fnv1a64_update(uint64_t h, std::string_view bytes) {
  for (const char c : bytes) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return h;
}

inline uint64_t fnv1a64(std::string_view bytes) { return fnv1a64_update(kFnv1aBasis, bytes); }

}  // namespace msa
