// AdamW on f32 master weights and moments (math in kernels/cpu/adamw.cc; the bias corrections
// come from the host in double), and the sum of squares for global-norm clipping, reduced in
// double in a fixed order so the clip factor does not vary from run to run.
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {
namespace {

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                             AdamWStep h) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = grad[i] * h.grad_scale;
    const float m_i = h.beta1 * m[i] + (1.0f - h.beta1) * g;
    const float v_i = h.beta2 * v[i] + (1.0f - h.beta2) * g * g;
    const float p = param[i];
    const float update = (m_i / h.bias1) / (sqrtf(v_i / h.bias2) + h.eps) + h.weight_decay * p;
    m[i] = m_i;
    v[i] = v_i;
    param[i] = p - h.lr * update;
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

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& h) {
  check_dtype(param, DType::kF32, "adamw_update (CUDA): param");
  check_dtype(grad, DType::kF32, "adamw_update (CUDA): grad");
  check_dtype(m, DType::kF32, "adamw_update (CUDA): m");
  check_dtype(v, DType::kF32, "adamw_update (CUDA): v");
  const int64_t n = param.numel();
  if (n == 0) return;
  adamw_kernel<<<grid_blocks(n), 256>>>(param.data<float>(), grad.data<float>(), m.data<float>(),
                                        v.data<float>(), n, h);
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

}  // namespace msa::cuda
