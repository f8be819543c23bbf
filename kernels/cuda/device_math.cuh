// Small device helpers shared by the dense CUDA kernels: bf16/f32 loads and stores, warp and
// block reductions, grid sizing, column sums.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"

namespace msa::cuda {

__device__ __forceinline__ float load_f(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f(const bf16* p, int64_t i) { return bf16_to_float(p[i]); }
__device__ __forceinline__ void store_f(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void store_f(bf16* p, int64_t i, float x) { p[i] = float_to_bf16(x); }

template <class T>
__device__ __forceinline__ T warp_reduce_sum(T x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_reduce_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <class T>
__device__ __forceinline__ T block_reduce_sum(T x) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  x = warp_reduce_sum(x);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = lane < n_warps ? partial[lane] : T(0);
  return warp_reduce_sum(x);
}
__device__ __forceinline__ float block_reduce_max(float x) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  x = warp_reduce_max(x);
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = lane < n_warps ? partial[lane] : -INFINITY;
  return warp_reduce_max(x);
}

// Eight bf16 values moved as one 16-byte access (memory-bound kernels reach full bandwidth only
// with wide accesses). The caller guarantees 16-byte alignment.
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = static_cast<uint32_t>(float_to_bf16(f[2 * i]).bits) |
           (static_cast<uint32_t>(float_to_bf16(f[2 * i + 1]).bits) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void load8(const bf16* p, float (&f)[8]) {
  unpack8(*reinterpret_cast<const uint4*>(p), f);
}
__device__ __forceinline__ void store8(bf16* p, const float (&f)[8]) {
  *reinterpret_cast<uint4*>(p) = pack8(f);
}

// True when every pointer is 16-byte aligned and n is a multiple of 8 (the vector paths).
inline bool vec8_ok(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % 8 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Blocks for a grid-stride loop over n elements with `threads` per block.
inline int grid_blocks(int64_t n, int threads = 256) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > 132 * 32) blocks = 132 * 32;  // enough to fill an H100 many times over
  return static_cast<int>(blocks);
}

// out[c] += sum over the rows of x[row, c] (x [rows, cols], bf16 or f32): a block of 32 x 8 threads
// owns 32 columns; its 8 rows of threads stride down the rows and meet in shared memory, the eight
// sums added in a fixed order. Deterministic (no atomics).
template <class T>
__global__ void column_sum_kernel(const T* x, float* out, int64_t rows, int64_t cols) {
  __shared__ float part[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  float s = 0;
  if (c < cols)
    for (int64_t n = threadIdx.y; n < rows; n += 8) s += load_f(x, n * cols + c);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = 0;
    for (int r = 0; r < 8; ++r) t += part[r][threadIdx.x];
    out[c] += t;
  }
}

// Launches column_sum_kernel over x [rows, cols].
template <class T>
inline void add_column_sums(const T* x, float* out, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  const unsigned blocks = static_cast<unsigned>((cols + 31) / 32);
  column_sum_kernel<T><<<blocks, dim3(32, 8)>>>(x, out, rows, cols);
  MSA_CUDA_CHECK_LAUNCH("column_sum_kernel");
}

}  // namespace msa::cuda
