#include "core/cuda/random_fill.h"

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "core/rng.h"

namespace msa::cuda {
namespace {

template <class T>
__global__ void random_fill_kernel(T* p, int64_t n, RandomKind kind, uint64_t seed, float a,
                                   float b) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = kind == RandomKind::kNormal
                        ? a + b * rng_normal(seed, static_cast<uint64_t>(i))
                        : a + (b - a) * (1.0f - rng_uniform(seed, static_cast<uint64_t>(i)));
    if constexpr (std::is_same_v<T, bf16>)
      p[i] = float_to_bf16(v);
    else
      p[i] = static_cast<T>(v);
  }
}

}  // namespace

bool can_fill_on_device(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16; }

void random_fill_on_device(void* data, DType dtype, int64_t n, RandomKind kind, uint64_t seed,
                           float a, float b) {
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
  if (dtype == DType::kF32)
    random_fill_kernel<float><<<blocks, 256>>>(static_cast<float*>(data), n, kind, seed, a, b);
  else
    random_fill_kernel<bf16><<<blocks, 256>>>(static_cast<bf16*>(data), n, kind, seed, a, b);
  MSA_CUDA_CHECK_LAUNCH("random_fill_kernel");
}

}  // namespace msa::cuda
