#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/dtype_convert.h"

namespace msa::cuda {
namespace {

__global__ void f32_to_bf16_kernel(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = float_to_bf16(src[i]);
}

__global__ void bf16_to_f32_kernel(const bf16* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = bf16_to_float(src[i]);
}

int grid_for(int64_t n) {
  int64_t blocks = (n + 255) / 256;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

bool can_convert_on_device(DType from, DType to) {
  return (from == DType::kF32 && to == DType::kBF16) || (from == DType::kBF16 && to == DType::kF32);
}

void convert_on_device(const void* src, DType from, void* dst, DType to, int64_t n) {
  if (n == 0) return;
  if (from == DType::kF32 && to == DType::kBF16) {
    f32_to_bf16_kernel<<<grid_for(n), 256>>>(static_cast<const float*>(src), static_cast<bf16*>(dst), n);
    MSA_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
  } else if (from == DType::kBF16 && to == DType::kF32) {
    bf16_to_f32_kernel<<<grid_for(n), 256>>>(static_cast<const bf16*>(src), static_cast<float*>(dst), n);
    MSA_CUDA_CHECK_LAUNCH("bf16_to_f32_kernel");
  } else {
    MSA_CHECK(false, "no device conversion from %s to %s", dtype_name(from), dtype_name(to));
  }
}

}  // namespace msa::cuda
