// RMSNorm forward and backward (math in kernels/cpu/norm.cc). One warp per row: rows are short
// (d_model or head_dim), a warp's shuffles reduce them without shared memory or block barriers.
// The weight gradient is a column sum over rows, done deterministically in two passes (per-chunk
// partial sums, then a fixed-order sum of the chunks) instead of with atomics.
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // warps per block
constexpr int kRowsPerChunk = 64;  // rows summed by one block of the dw partial pass

__global__ void rmsnorm_forward_kernel(const bf16* x, const bf16* w, float eps, bf16* y,
                                       float* rstd, int64_t N, int64_t D) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16* xr = x + row * D;
  float ss = 0;
  for (int64_t i = lane; i < D; i += 32) {
    const float v = load_f(xr, i);
    ss += v * v;
  }
  ss = warp_reduce_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(D) + eps);
  bf16* yr = y + row * D;
  for (int64_t i = lane; i < D; i += 32) store_f(yr, i, load_f(xr, i) * r * load_f(w, i));
  if (lane == 0) rstd[row] = r;
}

__global__ void rmsnorm_backward_dx_kernel(const bf16* dy, const bf16* x, const bf16* w,
                                           const float* rstd, bf16* dx, int64_t N, int64_t D) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16 *dyr = dy + row * D, *xr = x + row * D;
  float dot = 0;
  for (int64_t i = lane; i < D; i += 32) dot += load_f(w, i) * load_f(dyr, i) * load_f(xr, i);
  dot = warp_reduce_sum(dot);
  const float r = rstd[row];
  const float coef = r * r * r * dot / static_cast<float>(D);
  bf16* dxr = dx + row * D;
  for (int64_t i = lane; i < D; i += 32)
    store_f(dxr, i, r * load_f(w, i) * load_f(dyr, i) - coef * load_f(xr, i));
}

// Vector versions (D % 8 == 0, aligned rows): lane l handles groups of eight l, l + 32, ...
__global__ void rmsnorm_forward_vec8_kernel(const bf16* x, const bf16* w, float eps, bf16* y,
                                            float* rstd, int64_t N, int64_t D) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16* xr = x + row * D;
  float ss = 0;
  for (int64_t i = 8 * lane; i < D; i += 256) {
    float v[8];
    load8(xr + i, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += v[j] * v[j];
  }
  ss = warp_reduce_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(D) + eps);
  bf16* yr = y + row * D;
  for (int64_t i = 8 * lane; i < D; i += 256) {
    float v[8], g[8];
    load8(xr + i, v);
    load8(w + i, g);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = v[j] * r * g[j];
    store8(yr + i, v);
  }
  if (lane == 0) rstd[row] = r;
}

__global__ void rmsnorm_backward_dx_vec8_kernel(const bf16* dy, const bf16* x, const bf16* w,
                                                const float* rstd, bf16* dx, int64_t N,
                                                int64_t D) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16 *dyr = dy + row * D, *xr = x + row * D;
  float dot = 0;
  for (int64_t i = 8 * lane; i < D; i += 256) {
    float a[8], b[8], g[8];
    load8(dyr + i, a);
    load8(xr + i, b);
    load8(w + i, g);
#pragma unroll
    for (int j = 0; j < 8; ++j) dot += g[j] * a[j] * b[j];
  }
  dot = warp_reduce_sum(dot);
  const float r = rstd[row];
  const float coef = r * r * r * dot / static_cast<float>(D);
  bf16* dxr = dx + row * D;
  for (int64_t i = 8 * lane; i < D; i += 256) {
    float a[8], b[8], g[8];
    load8(dyr + i, a);
    load8(xr + i, b);
    load8(w + i, g);
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] = r * g[j] * a[j] - coef * b[j];
    store8(dxr + i, a);
  }
}

// partial[chunk, c] = sum over the chunk's rows n of dy[n, c] x[n, c] rstd[n]. Block: 32 columns
// x 8 thread rows.
__global__ void rmsnorm_dw_partial_kernel(const bf16* dy, const bf16* x, const float* rstd,
                                          float* partial, int64_t N, int64_t D) {
  __shared__ float part[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t n0 = blockIdx.y * static_cast<int64_t>(kRowsPerChunk);
  const int64_t n1 = min(N, n0 + kRowsPerChunk);
  float s = 0;
  if (c < D)
    for (int64_t n = n0 + threadIdx.y; n < n1; n += 8)
      s += load_f(dy, n * D + c) * load_f(x, n * D + c) * rstd[n];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float t = 0;
    for (int r = 0; r < 8; ++r) t += part[r][threadIdx.x];
    partial[blockIdx.y * D + c] = t;
  }
}

__global__ void sum_chunks_kernel(const float* partial, float* dw, int64_t chunks, int64_t D) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= D) return;
  float t = 0;
  for (int64_t k = 0; k < chunks; ++k) t += partial[k * D + c];
  dw[c] += t;
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  const int64_t N = x.size(0), D = x.size(1);
  check_dtype(x, DType::kBF16, "rmsnorm_forward (CUDA): x");
  check_dtype(rstd, DType::kF32, "rmsnorm_forward (CUDA): rstd");
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  if (vec8_ok(D, {x.raw_data(), w.raw_data(), y.raw_data()}))
    rmsnorm_forward_vec8_kernel<<<blocks, 32 * kRowsPerBlock>>>(
        x.data<bf16>(), w.data<bf16>(), static_cast<float>(eps), y.data<bf16>(),
        rstd.data<float>(), N, D);
  else
    rmsnorm_forward_kernel<<<blocks, 32 * kRowsPerBlock>>>(x.data<bf16>(), w.data<bf16>(),
                                                           static_cast<float>(eps), y.data<bf16>(),
                                                           rstd.data<float>(), N, D);
  MSA_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw) {
  const int64_t N = x.size(0), D = x.size(1);
  check_dtype(dy, DType::kBF16, "rmsnorm_backward (CUDA): dy");
  check_dtype(dx, DType::kBF16, "rmsnorm_backward (CUDA): dx");
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  if (vec8_ok(D, {dy.raw_data(), x.raw_data(), w.raw_data(), dx.raw_data()}))
    rmsnorm_backward_dx_vec8_kernel<<<blocks, 32 * kRowsPerBlock>>>(
        dy.data<bf16>(), x.data<bf16>(), w.data<bf16>(), rstd.data<float>(), dx.data<bf16>(), N,
        D);
  else
    rmsnorm_backward_dx_kernel<<<blocks, 32 * kRowsPerBlock>>>(
        dy.data<bf16>(), x.data<bf16>(), w.data<bf16>(), rstd.data<float>(), dx.data<bf16>(), N,
        D);
  MSA_CUDA_CHECK_LAUNCH("rmsnorm_backward_dx_kernel");
  if (!dw.defined()) return;
  check_dtype(dw, DType::kF32, "rmsnorm_backward (CUDA): dw");
  const int64_t chunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  Tensor partial = Tensor::empty({chunks, D}, DType::kF32, Device::kCUDA);
  const dim3 grid(static_cast<unsigned>((D + 31) / 32), static_cast<unsigned>(chunks));
  rmsnorm_dw_partial_kernel<<<grid, dim3(32, 8)>>>(dy.data<bf16>(), x.data<bf16>(),
                                                   rstd.data<float>(), partial.data<float>(), N, D);
  MSA_CUDA_CHECK_LAUNCH("rmsnorm_dw_partial_kernel");
  sum_chunks_kernel<<<static_cast<unsigned>((D + 255) / 256), 256>>>(partial.data<float>(),
                                                                      dw.data<float>(), chunks, D);
  MSA_CUDA_CHECK_LAUNCH("sum_chunks_kernel");
}

}  // namespace msa::cuda
