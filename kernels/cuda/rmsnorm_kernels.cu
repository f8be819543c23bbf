// RMSNorm forward and backward (math in kernels/cpu/norm.cc). One warp per row: rows are short
// (d_model or head_dim), a warp's shuffles reduce them without shared memory or block barriers.
// The weight gradient is a column sum over rows, done deterministically in two passes (per-chunk
// partial sums, then a fixed-order sum of the chunks) instead of with atomics.
#include <algorithm>
#include <type_traits>

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
                                           const float* rstd, const bf16* residual, bf16* dx,
                                           int64_t N, int64_t D) {
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
  const bf16* rr = residual != nullptr ? residual + row * D : nullptr;
  for (int64_t i = lane; i < D; i += 32) {
    float v = r * load_f(w, i) * load_f(dyr, i) - coef * load_f(xr, i);
    if (rr != nullptr) v += load_f(rr, i);
    store_f(dxr, i, v);
  }
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

// mid = a + b (a residual add) and y = RMSNorm(mid) w in one pass. The sum stays in registers as
// the bf16 it is stored as, and the sum of squares runs in rmsnorm_forward_vec8_kernel's order:
// y and rstd are bit for bit what rmsnorm_forward of the stored mid gives.
template <int kGroups>
__global__ void add_rmsnorm_forward_kernel(const bf16* a, const bf16* b, const bf16* w, float eps,
                                           bf16* sum, bf16* y, float* rstd, int64_t N, int64_t D) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const int64_t base = row * D;
  uint4 mid[kGroups];
  float ss = 0;
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const int64_t i = 8 * lane + 256 * g;
    if (i < D) {
      float u[8], v[8];
      load8(a + base + i, u);
      load8(b + base + i, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) u[j] += v[j];
      mid[g] = pack8(u);
      *reinterpret_cast<uint4*>(sum + base + i) = mid[g];
      unpack8(mid[g], u);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += u[j] * u[j];
    }
  }
  ss = warp_reduce_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(D) + eps);
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const int64_t i = 8 * lane + 256 * g;
    if (i < D) {
      float u[8], c[8];
      unpack8(mid[g], u);
      load8(w + i, c);
#pragma unroll
      for (int j = 0; j < 8; ++j) u[j] = u[j] * r * c[j];
      store8(y + base + i, u);
    }
  }
  if (lane == 0) rstd[row] = r;
}

// The second half of RMSNorm's backward for columns i .. i + 7 of a row: dx = r w dy - coef x,
// plus the residual's gradient when rr is not null.
__device__ __forceinline__ void store_dx8(const bf16* dyr, const bf16* xr, const bf16* w,
                                          const bf16* rr, bf16* dxr, int64_t i, float r,
                                          float coef) {
  float a[8], b[8], g[8];
  load8(dyr + i, a);
  load8(xr + i, b);
  load8(w + i, g);
#pragma unroll
  for (int j = 0; j < 8; ++j) a[j] = r * g[j] * a[j] - coef * b[j];
  if (rr != nullptr) {
    load8(rr + i, b);
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] += b[j];
  }
  store8(dxr + i, a);
}

__global__ void rmsnorm_backward_dx_vec8_kernel(const bf16* dy, const bf16* x, const bf16* w,
                                                const float* rstd, const bf16* residual, bf16* dx,
                                                int64_t N, int64_t D) {
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
  const bf16* rr = residual != nullptr ? residual + row * D : nullptr;
  for (int64_t i = 8 * lane; i < D; i += 256) store_dx8(dyr, xr, w, rr, dxr, i, r, coef);
}

// dx (plus the residual) and the dw partial sums in one pass over dy and x: a block takes
// kFusedRowsPerChunk rows, its warps one row at a time; each lane keeps the dw sums of its
// kGroups 8-column groups (columns 8 lane + 256 g) in registers, and the warps add theirs into the
// block's partial row in warp order (deterministic). Pass two re-reads the row from L1.
constexpr int kFusedWarps = 8;
constexpr int kFusedRowsPerChunk = 128;

template <int kGroups>
__global__ void __launch_bounds__(32 * kFusedWarps)
    rmsnorm_backward_fused_kernel(const bf16* dy, const bf16* x, const bf16* w, const float* rstd,
                                  const bf16* residual, bf16* dx, float* partial, int64_t N,
                                  int64_t D) {
  __shared__ float block_sum[256 * kGroups];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = blockIdx.x * static_cast<int64_t>(kFusedRowsPerChunk);
  const int64_t n1 = min(N, n0 + kFusedRowsPerChunk);
  float acc[kGroups][8];
#pragma unroll
  for (int g = 0; g < kGroups; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0;
  for (int64_t row = n0 + warp; row < n1; row += kFusedWarps) {
    const bf16 *dyr = dy + row * D, *xr = x + row * D;
    const float r = rstd[row];
    float dot = 0;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int64_t i = 8 * lane + 256 * g;
      if (i < D) {
        float a[8], b[8], c[8];
        load8(dyr + i, a);
        load8(xr + i, b);
        load8(w + i, c);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float p = a[j] * b[j];
          dot += c[j] * p;
          acc[g][j] += p * r;
        }
      }
    }
    dot = warp_reduce_sum(dot);
    const float coef = r * r * r * dot / static_cast<float>(D);
    bf16* dxr = dx + row * D;
    const bf16* rr = residual != nullptr ? residual + row * D : nullptr;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int64_t i = 8 * lane + 256 * g;
      if (i < D) store_dx8(dyr, xr, w, rr, dxr, i, r, coef);
    }
  }
  if (partial == nullptr) return;
  for (int k = 0; k < kFusedWarps; ++k) {
    if (warp == k) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int i = 8 * lane + 256 * g;
        if (i < D)
#pragma unroll
          for (int j = 0; j < 8; ++j)
            block_sum[i + j] = (k == 0 ? 0.0f : block_sum[i + j]) + acc[g][j];
      }
    }
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) partial[blockIdx.x * D + c] = block_sum[c];
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

// The fused kernels hold a row's columns in per-lane groups of eight, 256 columns per group
// across the warp: rows of up to kMaxFusedColumns.
constexpr int64_t kMaxFusedColumns = 4096;

// Calls launch(std::integral_constant<int, G>()) with the fewest groups G of the instantiated
// 1, 4, 8, 16 that cover D <= kMaxFusedColumns columns.
template <class Launch>
void with_column_groups(int64_t D, Launch&& launch) {
  if (D <= 256)
    launch(std::integral_constant<int, 1>());
  else if (D <= 1024)
    launch(std::integral_constant<int, 4>());
  else if (D <= 2048)
    launch(std::integral_constant<int, 8>());
  else
    launch(std::integral_constant<int, 16>());
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

void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& w, double eps,
                         Tensor& sum, Tensor& y, Tensor& rstd) {
  const int64_t N = sum.size(0), D = sum.size(1);
  check_dtype(a, DType::kBF16, "add_rmsnorm_forward (CUDA): a");
  check_dtype(b, DType::kBF16, "add_rmsnorm_forward (CUDA): b");
  check_dtype(sum, DType::kBF16, "add_rmsnorm_forward (CUDA): sum");
  check_dtype(rstd, DType::kF32, "add_rmsnorm_forward (CUDA): rstd");
  if (!vec8_ok(D, {a.raw_data(), b.raw_data(), w.raw_data(), sum.raw_data(), y.raw_data()}) ||
      D > kMaxFusedColumns) {
    add(a, b, sum);
    rmsnorm_forward(sum, w, eps, y, rstd);
    return;
  }
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  with_column_groups(D, [&](auto groups) {
    add_rmsnorm_forward_kernel<decltype(groups)::value><<<blocks, 32 * kRowsPerBlock>>>(
        a.data<bf16>(), b.data<bf16>(), w.data<bf16>(), static_cast<float>(eps), sum.data<bf16>(),
        y.data<bf16>(), rstd.data<float>(), N, D);
  });
  MSA_CUDA_CHECK_LAUNCH("add_rmsnorm_forward_kernel");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw, const Tensor& residual) {
  const int64_t N = x.size(0), D = x.size(1);
  check_dtype(dy, DType::kBF16, "rmsnorm_backward (CUDA): dy");
  check_dtype(dx, DType::kBF16, "rmsnorm_backward (CUDA): dx");
  if (residual.defined()) check_dtype(residual, DType::kBF16, "rmsnorm_backward (CUDA): residual");
  if (dw.defined()) check_dtype(dw, DType::kF32, "rmsnorm_backward (CUDA): dw");
  if (N == 0) return;
  const bf16* res = residual.defined() ? residual.data<bf16>() : nullptr;
  const bool vec8 = vec8_ok(D, {dy.raw_data(), x.raw_data(), w.raw_data(), dx.raw_data(),
                                residual.defined() ? residual.raw_data() : nullptr});
  if (vec8 && D <= kMaxFusedColumns) {
    const int64_t chunks = (N + kFusedRowsPerChunk - 1) / kFusedRowsPerChunk;
    Tensor partial;
    if (dw.defined()) partial = Tensor::empty({chunks, D}, DType::kF32, Device::kCUDA);
    with_column_groups(D, [&](auto groups) {
      rmsnorm_backward_fused_kernel<decltype(groups)::value>
          <<<static_cast<unsigned>(chunks), 32 * kFusedWarps>>>(
              dy.data<bf16>(), x.data<bf16>(), w.data<bf16>(), rstd.data<float>(), res,
              dx.data<bf16>(), dw.defined() ? partial.data<float>() : nullptr, N, D);
    });
    MSA_CUDA_CHECK_LAUNCH("rmsnorm_backward_fused_kernel");
    if (dw.defined()) {
      add_column_sums(partial.data<float>(), dw.data<float>(), chunks, D);
    }
    return;
  }
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  if (vec8)
    rmsnorm_backward_dx_vec8_kernel<<<blocks, 32 * kRowsPerBlock>>>(
        dy.data<bf16>(), x.data<bf16>(), w.data<bf16>(), rstd.data<float>(), res, dx.data<bf16>(),
        N, D);
  else
    rmsnorm_backward_dx_kernel<<<blocks, 32 * kRowsPerBlock>>>(dy.data<bf16>(), x.data<bf16>(),
                                                               w.data<bf16>(), rstd.data<float>(),
                                                               res, dx.data<bf16>(), N, D);
  MSA_CUDA_CHECK_LAUNCH("rmsnorm_backward_dx_kernel");
  if (!dw.defined()) return;
  const int64_t chunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  Tensor partial = Tensor::empty({chunks, D}, DType::kF32, Device::kCUDA);
  // grid.y is at most 65535 chunks per launch (past ~4.2M rows: more launches).
  constexpr int64_t kMaxGridY = 65535;
  for (int64_t c0 = 0; c0 < chunks; c0 += kMaxGridY) {
    const int64_t n_chunks = std::min(kMaxGridY, chunks - c0), r0 = c0 * kRowsPerChunk;
    const dim3 grid(static_cast<unsigned>((D + 31) / 32), static_cast<unsigned>(n_chunks));
    rmsnorm_dw_partial_kernel<<<grid, dim3(32, 8)>>>(
        dy.data<bf16>() + r0 * D, x.data<bf16>() + r0 * D, rstd.data<float>() + r0,
        partial.data<float>() + c0 * D, std::min(N - r0, n_chunks * kRowsPerChunk), D);
    MSA_CUDA_CHECK_LAUNCH("rmsnorm_dw_partial_kernel");
  }
  add_column_sums(partial.data<float>(), dw.data<float>(), chunks, D);  // dw += the chunks' sums
}

}  // namespace msa::cuda
