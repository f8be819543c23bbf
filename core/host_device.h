// Lets small inline functions (bf16 conversion, RNG) compile for both host and device.
#pragma once

#if defined(__CUDACC__)
#define MSA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSA_HOST_DEVICE inline
#endif
