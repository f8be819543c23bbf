// Host-side helpers for launching templated kernels: dispatch a runtime size to a compile-time
// one, and allow a kernel its dynamic shared memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "core/cuda/cuda_check.h"

namespace msa::cuda {

// The sizes with_pow2 dispatches (head dims, index dims, block sizes the kernels take).
inline bool pow2_16_128(int64_t x) { return x == 16 || x == 32 || x == 64 || x == 128; }

// f(std::integral_constant<int, x>) for x in 16, 32, 64, 128 (callers check pow2_16_128 first:
// anything else runs as 128).
template <class F>
void with_pow2(int64_t x, F&& f) {
  switch (x) {
    case 16:
      return f(std::integral_constant<int, 16>{});
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    default:
      return f(std::integral_constant<int, 128>{});
  }
}

// Allows `kernel` `bytes` of dynamic shared memory. Per call: the attribute belongs to the
// current device (a host call of microseconds).
template <class Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  MSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

// True when the current device is a Hopper running this binary's sm_90a code, which the wgmma
// kernels need (sm90a_code.cu; probed once per device).
bool sm90a_code_available();

}  // namespace msa::cuda
