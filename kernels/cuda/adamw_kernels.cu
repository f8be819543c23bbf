// AdamW on f32 master weights and moments (math in kernels/cpu/adamw.cc; the bias corrections
// come from the host in double), and the sum of squares for global-norm clipping, reduced in
// double in a fixed order so the clip factor does not vary from run to run.
#include <algorithm>

#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {
namespace {

__device__ __forceinline__ float adamw_element(float p, float g, float& m, float& v,
                                               const AdamWStep& h) {
  g *= h.grad_scale;
  m = h.beta1 * m + (1.0f - h.beta1) * g;
  v = h.beta2 * v + (1.0f - h.beta2) * g * g;
  return p - h.lr * ((m / h.bias1) / (sqrtf(v / h.bias2) + h.eps) + h.weight_decay * p);
}

// Four elements per thread and iteration with 16-byte accesses (n4 = n / 4, aligned).
__global__ void adamw_vec4_kernel(float4* param, const float4* grad, float4* m, float4* v,
                                  uint2* copy, int64_t n4, AdamWStep h) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float4 p = param[i], mm = m[i], vv = v[i];
    const float4 g = grad[i];
    p.x = adamw_element(p.x, g.x, mm.x, vv.x, h);
    p.y = adamw_element(p.y, g.y, mm.y, vv.y, h);
    p.z = adamw_element(p.z, g.z, mm.z, vv.z, h);
    p.w = adamw_element(p.w, g.w, mm.w, vv.w, h);
    param[i] = p;
    m[i] = mm;
    v[i] = vv;
    if (copy != nullptr)
      copy[i] = make_uint2(
          static_cast<uint32_t>(float_to_bf16(p.x).bits) | (static_cast<uint32_t>(float_to_bf16(p.y).bits) << 16),
          static_cast<uint32_t>(float_to_bf16(p.z).bits) | (static_cast<uint32_t>(float_to_bf16(p.w).bits) << 16));
  }
}

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, bf16* copy,
                             int64_t n, AdamWStep h) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = grad[i] * h.grad_scale;
    const float m_i = h.beta1 * m[i] + (1.0f - h.beta1) * g;
    const float v_i = h.beta2 * v[i] + (1.0f - h.beta2) * g * g;
    const float p = param[i];
    const float update = (m_i / h.bias1) / (sqrtf(v_i / h.bias2) + h.eps) + h.weight_decay * p;
    m[i] = m_i;
    v[i] = v_i;
    const float updated = p - h.lr * update;
    param[i] = updated;
    if (copy != nullptr) copy[i] = float_to_bf16(updated);
  }
}

constexpr int kSumBlocks = 256;

template <class T>
__global__ void sum_squares_partial_kernel(const T* x, int64_t n, double* partial) {
  double s = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = load_f(x, i);
    s += v * v;
  }
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(const double* partial, int n, double* out) {
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& h,
                  Tensor* compute_copy) {
  check_dtype(param, DType::kF32, "adamw_update (CUDA): param");
  check_dtype(grad, DType::kF32, "adamw_update (CUDA): grad");
  check_dtype(m, DType::kF32, "adamw_update (CUDA): m");
  check_dtype(v, DType::kF32, "adamw_update (CUDA): v");
  const int64_t n = param.numel();
  if (n == 0) return;
  bf16* copy = nullptr;
  if (compute_copy != nullptr) {
    check_dtype(*compute_copy, DType::kBF16, "adamw_update (CUDA): compute_copy");
    copy = compute_copy->data<bf16>();
  }
  const bool vec = n % 4 == 0 && vec8_ok(8, {param.raw_data(), grad.raw_data(), m.raw_data(),
                                               v.raw_data()}) &&
                   (copy == nullptr || reinterpret_cast<uintptr_t>(copy) % 8 == 0);
  if (vec)
    adamw_vec4_kernel<<<grid_blocks(n / 4), 256>>>(
        reinterpret_cast<float4*>(param.raw_data()), reinterpret_cast<const float4*>(grad.raw_data()),
        reinterpret_cast<float4*>(m.raw_data()), reinterpret_cast<float4*>(v.raw_data()),
        reinterpret_cast<uint2*>(copy), n / 4, h);
  else
    adamw_kernel<<<grid_blocks(n), 256>>>(param.data<float>(), grad.data<float>(),
                                          m.data<float>(), v.data<float>(), copy, n, h);
  MSA_CUDA_CHECK_LAUNCH("adamw_kernel");
}

double sum_of_squares(const Tensor& t) {
  const int64_t n = t.numel();
  if (n == 0) return 0.0;
  Tensor partial = Tensor::empty({kSumBlocks + 1}, DType::kF64, Device::kCUDA);
  double* p = partial.data<double>();
  if (t.dtype() == DType::kBF16)
    sum_squares_partial_kernel<<<kSumBlocks, 256>>>(t.data<bf16>(), n, p);
  else
    sum_squares_partial_kernel<<<kSumBlocks, 256>>>(t.data<float>(), n, p);
  MSA_CUDA_CHECK_LAUNCH("sum_squares_partial_kernel");
  sum_partials_kernel<<<1, 256>>>(p, kSumBlocks, p + kSumBlocks);
  MSA_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  return partial.slice0(kSumBlocks, kSumBlocks + 1).to_double_vector()[0];
}

std::vector<double> sums_of_squares(const std::vector<Tensor>& tensors) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  if (n == 0) return {};
  // Each tensor gets enough blocks to stream at full bandwidth (one per 64K elements, 1..256).
  std::vector<int64_t> first(n + 1, 0);
  for (int64_t i = 0; i < n; ++i)
    first[i + 1] = first[i] + std::min<int64_t>(256, std::max<int64_t>(1, tensors[i].numel() >> 16));
  Tensor partial = Tensor::empty({first[n] + n}, DType::kF64, Device::kCUDA);
  double* p = partial.data<double>();
  for (int64_t i = 0; i < n; ++i) {
    const Tensor& t = tensors[i];
    const unsigned blocks = static_cast<unsigned>(first[i + 1] - first[i]);
    double* slot = p + first[i];
    if (t.numel() == 0) {
      MSA_CUDA_CHECK(cudaMemsetAsync(slot, 0, blocks * sizeof(double), nullptr));
    } else if (t.dtype() == DType::kBF16) {
      sum_squares_partial_kernel<<<blocks, 256>>>(t.data<bf16>(), t.numel(), slot);
    } else {
      sum_squares_partial_kernel<<<blocks, 256>>>(t.data<float>(), t.numel(), slot);
    }
    MSA_CUDA_CHECK_LAUNCH("sum_squares_partial_kernel");
  }
  for (int64_t i = 0; i < n; ++i) {
    sum_partials_kernel<<<1, 256>>>(p + first[i], static_cast<int>(first[i + 1] - first[i]),
                                    p + first[n] + i);
    MSA_CUDA_CHECK_LAUNCH("sum_partials_kernel");
  }
  return partial.slice0(first[n], first[n] + n).to_double_vector();
}

}  // namespace msa::cuda
