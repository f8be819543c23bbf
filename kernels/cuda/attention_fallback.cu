// Hand-written dense causal GQA attention for shapes cuDNN refuses (and as an independent check
// of the cuDNN path in the GPU tests). Simple on purpose: one warp owns one row and walks the
// keys (or queries) in order with an online softmax; lane l owns dimensions l, l+32, ... (d <=
// 256); all arithmetic is f32. No tensor cores, so it is far slower than cuDNN. With fewer queries
// than keys (S < Sk: context parallelism), query t sits at position off + t (off = Sk - S) and
// attends the keys s <= off + t; the dK, dV warps cover all Sk keys.
#include <cmath>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "core/env_switch.h"
#include "kernels/cuda/attention_cuda.h"

namespace msa::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxPerLane = 8;  // d <= 256
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return bf16_to_float(x); }
template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) {
  return float_to_bf16(x);
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// S query tokens, Sk key tokens, query t at position off + t (off = Sk - S).
struct Dims {
  int64_t B, S, H, G, d, Sk, off;
};

template <class T>
__device__ __forceinline__ void load_row(const T* p, int64_t d, int lane, float* r) {
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t i = lane + j * kWarp;
    r[j] = i < d ? to_f(p[i]) : 0.0f;
  }
}

template <class T>
__device__ __forceinline__ float dot_row(const float* r, const T* p, int64_t d, int lane) {
  float s = 0;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t i = lane + j * kWarp;
    if (i < d) s += r[j] * to_f(p[i]);
  }
  return warp_sum(s);
}

template <class T>
__global__ void forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, Dims n,
                               float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n.B * n.S * n.H) return;
  const int64_t h = row % n.H, t = (row / n.H) % n.S, b = row / (n.H * n.S);
  const int64_t g = h / (n.H / n.G);
  float qr[kMaxPerLane], acc[kMaxPerLane];
  load_row(q + row * n.d, n.d, lane, qr);
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) acc[j] = 0;
  float m = -INFINITY, l = 0;
  for (int64_t s = 0; s <= n.off + t; ++s) {
    const int64_t kv = ((b * n.Sk + s) * n.G + g) * n.d;
    const float z = scale * dot_row(qr, k + kv, n.d, lane);
    const float m_new = fmaxf(m, z);
    const float corr = expf(m - m_new), p = expf(z - m_new);
    l = l * corr + p;
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      const int64_t i = lane + j * kWarp;
      acc[j] = acc[j] * corr + (i < n.d ? p * to_f(v[kv + i]) : 0.0f);
    }
    m = m_new;
  }
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t i = lane + j * kWarp;
    if (i < n.d) out[row * n.d + i] = from_f<T>(acc[j] / l);
  }
  if (lane == 0) lse[(b * n.H + h) * n.S + t] = m + logf(l);
}

// delta[b, h, t] = dout_t . out_t
template <class T>
__global__ void delta_kernel(const T* dout, const T* out, float* delta, Dims n) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n.B * n.S * n.H) return;
  const int64_t h = row % n.H, t = (row / n.H) % n.S, b = row / (n.H * n.S);
  float r[kMaxPerLane];
  load_row(dout + row * n.d, n.d, lane, r);
  const float s = dot_row(r, out + row * n.d, n.d, lane);
  if (lane == 0) delta[(b * n.H + h) * n.S + t] = s;
}

template <class T>
__global__ void dq_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse,
                          const float* delta, T* dq, Dims n, float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n.B * n.S * n.H) return;
  const int64_t h = row % n.H, t = (row / n.H) % n.S, b = row / (n.H * n.S);
  const int64_t g = h / (n.H / n.G);
  float qr[kMaxPerLane], dor[kMaxPerLane], acc[kMaxPerLane];
  load_row(q + row * n.d, n.d, lane, qr);
  load_row(dout + row * n.d, n.d, lane, dor);
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) acc[j] = 0;
  const float L = lse[(b * n.H + h) * n.S + t], D = delta[(b * n.H + h) * n.S + t];
  for (int64_t s = 0; s <= n.off + t; ++s) {
    const int64_t kv = ((b * n.Sk + s) * n.G + g) * n.d;
    const float p = expf(scale * dot_row(qr, k + kv, n.d, lane) - L);
    const float ds = p * (dot_row(dor, v + kv, n.d, lane) - D);
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      const int64_t i = lane + j * kWarp;
      if (i < n.d) acc[j] += scale * ds * to_f(k[kv + i]);
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t i = lane + j * kWarp;
    if (i < n.d) dq[row * n.d + i] = from_f<T>(acc[j]);
  }
}

// One warp per (b, s, g) of the Sk keys: sums over the group's heads and the queries at positions
// off + t >= s.
template <class T>
__global__ void dkdv_kernel(const T* dout, const T* q, const T* k, const T* v, const float* lse,
                            const float* delta, T* dk, T* dv, Dims n, float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n.B * n.Sk * n.G) return;
  const int64_t g = row % n.G, s = (row / n.G) % n.Sk, b = row / (n.G * n.Sk);
  const int64_t r = n.H / n.G;
  float kr[kMaxPerLane], vr[kMaxPerLane], dka[kMaxPerLane], dva[kMaxPerLane];
  load_row(k + row * n.d, n.d, lane, kr);
  load_row(v + row * n.d, n.d, lane, vr);
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) dka[j] = dva[j] = 0;
  for (int64_t h = g * r; h < (g + 1) * r; ++h) {
    for (int64_t t = s > n.off ? s - n.off : 0; t < n.S; ++t) {
      const int64_t qrow = ((b * n.S + t) * n.H + h) * n.d;
      const float L = lse[(b * n.H + h) * n.S + t], D = delta[(b * n.H + h) * n.S + t];
      const float p = expf(scale * dot_row(kr, q + qrow, n.d, lane) - L);
      const float ds = p * (dot_row(vr, dout + qrow, n.d, lane) - D);
#pragma unroll
      for (int j = 0; j < kMaxPerLane; ++j) {
        const int64_t i = lane + j * kWarp;
        if (i < n.d) {
          dva[j] += p * to_f(dout[qrow + i]);
          dka[j] += scale * ds * to_f(q[qrow + i]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t i = lane + j * kWarp;
    if (i < n.d) {
      dk[row * n.d + i] = from_f<T>(dka[j]);
      dv[row * n.d + i] = from_f<T>(dva[j]);
    }
  }
}

unsigned blocks_for(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

Dims to_dims(const cpu::AttentionDims& a) {
  return {a.batch, a.seq, a.heads, a.groups, a.dim, a.keys(), a.query_offset()};
}

template <class Fn>
void dispatch(DType dt, const char* op, Fn&& fn) {
  if (dt == DType::kBF16) {
    fn(bf16{});
  } else if (dt == DType::kF32) {
    fn(float{});
  } else {
    MSA_CHECK(false, "%s: CUDA attention takes bf16 or f32, got %s", op, dtype_name(dt));
  }
}

}  // namespace

bool attention_fallback_forced() { return env_is("MSA_ATTENTION", "fallback", {"cudnn"}); }

void fallback_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                Tensor& out, Tensor& lse, const cpu::AttentionDims& dims) {
  MSA_CHECK(dims.dim <= kWarp * kMaxPerLane, "attention: head dim %d > %d", dims.dim,
            kWarp * kMaxPerLane);
  const Dims n = to_dims(dims);
  const int64_t rows = n.B * n.S * n.H;
  if (rows == 0) return;
  dispatch(q.dtype(), "attention_forward", [&](auto zero) {
    using T = decltype(zero);
    forward_kernel<T><<<blocks_for(rows), kWarpsPerBlock * kWarp>>>(
        q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<float>(), n,
        static_cast<float>(scale));
    MSA_CUDA_CHECK_LAUNCH("attention forward_kernel");
  });
}

void fallback_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& out, const Tensor& lse,
                                 double scale, Tensor& dq, Tensor& dk, Tensor& dv,
                                 const cpu::AttentionDims& dims) {
  MSA_CHECK(dims.dim <= kWarp * kMaxPerLane, "attention: head dim %d > %d", dims.dim,
            kWarp * kMaxPerLane);
  const Dims n = to_dims(dims);
  const int64_t rows = n.B * n.S * n.H;
  if (rows == 0) return;
  Tensor delta = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
  const float sc = static_cast<float>(scale);
  dispatch(q.dtype(), "attention_backward", [&](auto zero) {
    using T = decltype(zero);
    delta_kernel<T><<<blocks_for(rows), kWarpsPerBlock * kWarp>>>(dout.data<T>(), out.data<T>(),
                                                                    delta.data<float>(), n);
    MSA_CUDA_CHECK_LAUNCH("attention delta_kernel");
    dq_kernel<T><<<blocks_for(rows), kWarpsPerBlock * kWarp>>>(
        dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), lse.data<float>(),
        delta.data<float>(), dq.data<T>(), n, sc);
    MSA_CUDA_CHECK_LAUNCH("attention dq_kernel");
    const int64_t kv_rows = n.B * n.Sk * n.G;
    dkdv_kernel<T><<<blocks_for(kv_rows), kWarpsPerBlock * kWarp>>>(
        dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), lse.data<float>(),
        delta.data<float>(), dk.data<T>(), dv.data<T>(), n, sc);
    MSA_CUDA_CHECK_LAUNCH("attention dkdv_kernel");
  });
}

}  // namespace msa::cuda
