// Memory-bound elementwise kernels: residual adds and scaling, SwiGLU, embedding and the
// bias-gradient column sums. All arithmetic is f32; bf16 is only the storage format. Each
// kernel is a grid-stride loop, so any size launches the same way.
#include <cub/cub.cuh>

#include <cmath>

#include "core/deterministic.h"
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {

#define MSA_GRID_STRIDE(i, n)                                                      \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

namespace {

template <class T>
__global__ void add_kernel(T* out, const T* y, const T* x, int64_t n) {
  MSA_GRID_STRIDE(i, n) store_f(out, i, load_f(y, i) + load_f(x, i));
}

template <class T>
__global__ void scale_kernel(T* y, float a, int64_t n) {
  MSA_GRID_STRIDE(i, n) store_f(y, i, a * load_f(y, i));
}

// Vector versions: n8 = n / 8 groups of eight bf16.
__global__ void add_vec8_kernel(bf16* out, const bf16* y, const bf16* x, int64_t n8) {
  MSA_GRID_STRIDE(i, n8) {
    float a[8], b[8];
    load8(y + 8 * i, a);
    load8(x + 8 * i, b);
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] += b[j];
    store8(out + 8 * i, a);
  }
}

__global__ void scale_vec8_kernel(bf16* y, float s, int64_t n8) {
  MSA_GRID_STRIDE(i, n8) {
    float a[8];
    load8(y + 8 * i, a);
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] *= s;
    store8(y + 8 * i, a);
  }
}

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + __expf(-z)); }

__global__ void swiglu_forward_vec8_kernel(const bf16* gate, const bf16* up, bf16* out,
                                           int64_t n8) {
  MSA_GRID_STRIDE(i, n8) {
    float g[8], u[8];
    load8(gate + 8 * i, g);
    load8(up + 8 * i, u);
#pragma unroll
    for (int j = 0; j < 8; ++j) g[j] = g[j] * sigmoid(g[j]) * u[j];
    store8(out + 8 * i, g);
  }
}

__global__ void swiglu_backward_vec8_kernel(const bf16* dout, const bf16* gate, const bf16* up,
                                            bf16* dgate, bf16* dup, int64_t n8) {
  MSA_GRID_STRIDE(i, n8) {
    float g[8], u[8], d[8], dg[8], du[8];
    load8(gate + 8 * i, g);
    load8(up + 8 * i, u);
    load8(dout + 8 * i, d);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float s = sigmoid(g[j]);
      dg[j] = d[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
      du[j] = d[j] * g[j] * s;
    }
    store8(dgate + 8 * i, dg);
    store8(dup + 8 * i, du);
  }
}

__global__ void swiglu_forward_kernel(const bf16* gate, const bf16* up, bf16* out, int64_t n) {
  MSA_GRID_STRIDE(i, n) {
    const float g = load_f(gate, i);
    store_f(out, i, g * sigmoid(g) * load_f(up, i));
  }
}

// d/dg [g s(g)] = s(g) (1 + g (1 - s(g))).
__global__ void swiglu_backward_kernel(const bf16* dout, const bf16* gate, const bf16* up,
                                       bf16* dgate, bf16* dup, int64_t n) {
  MSA_GRID_STRIDE(i, n) {
    const float g = load_f(gate, i), u = load_f(up, i), d = load_f(dout, i);
    const float s = sigmoid(g);
    store_f(dgate, i, d * u * s * (1.0f + g * (1.0f - s)));
    store_f(dup, i, d * g * s);
  }
}

// One thread per output element; consecutive threads read consecutive columns of a row.
__global__ void embedding_forward_kernel(const int32_t* tokens, const bf16* table, bf16* out,
                                         int64_t N, int64_t D, int64_t v0, int64_t V) {
  MSA_GRID_STRIDE(i, N * D) {
    const int64_t n = i / D, c = i % D;
    const int64_t row = static_cast<int64_t>(tokens[n]) - v0;
    out[i] = (row >= 0 && row < V) ? table[row * D + c] : bf16{0};
  }
}

// Atomics: the same token can occur many times in a batch. f32 atomics make the sum's order
// (and its last bits) vary from run to run; deterministic mode takes the sorted kernel below.
__global__ void embedding_backward_kernel(const bf16* dout, const int32_t* tokens, float* dtable,
                                          int64_t N, int64_t D, int64_t v0, int64_t V) {
  MSA_GRID_STRIDE(i, N * D) {
    const int64_t n = i / D, c = i % D;
    const int64_t row = static_cast<int64_t>(tokens[n]) - v0;
    if (row >= 0 && row < V) atomicAdd(dtable + row * D + c, load_f(dout, i));
  }
}

// Deterministic embedding backward (core/deterministic.h): the tokens sorted stably with their
// positions (equal tokens keep ascending n), then the thread of (run start i, column c) adds the
// run's rows in that order. One run per distinct token: a frequent token is a long serial loop,
// but each step of it reads D consecutive values across the run's threads.
__global__ void embedding_backward_sorted_kernel(const bf16* dout, const int32_t* sorted_tokens,
                                                 const int32_t* sorted_pos, float* dtable,
                                                 int64_t N, int64_t D, int64_t v0, int64_t V) {
  MSA_GRID_STRIDE(i, N * D) {
    const int64_t n = i / D, c = i % D;
    const int32_t tok = sorted_tokens[n];
    if (n > 0 && sorted_tokens[n - 1] == tok) continue;  // not the start of a run
    const int64_t row = static_cast<int64_t>(tok) - v0;
    if (row < 0 || row >= V) continue;
    float acc = dtable[row * D + c];
    for (int64_t m = n; m < N && sorted_tokens[m] == tok; ++m)
      acc += load_f(dout, static_cast<int64_t>(sorted_pos[m]) * D + c);
    dtable[row * D + c] = acc;
  }
}

__global__ void iota_kernel(int32_t* x, int64_t n) {
  MSA_GRID_STRIDE(i, n) x[i] = static_cast<int32_t>(i);
}

}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  if (out.dtype() == DType::kBF16) {
    check_dtype(a, DType::kBF16, "add (CUDA): a");
    check_dtype(b, DType::kBF16, "add (CUDA): b");
    if (vec8_ok(n, {out.raw_data(), a.raw_data(), b.raw_data()}))
      add_vec8_kernel<<<grid_blocks(n / 8), 256>>>(out.data<bf16>(), a.data<bf16>(),
                                                   b.data<bf16>(), n / 8);
    else
      add_kernel<<<grid_blocks(n), 256>>>(out.data<bf16>(), a.data<bf16>(), b.data<bf16>(), n);
  } else {
    check_dtype(out, DType::kF32, "add (CUDA): out");
    check_dtype(a, DType::kF32, "add (CUDA): a");
    check_dtype(b, DType::kF32, "add (CUDA): b");
    add_kernel<<<grid_blocks(n), 256>>>(out.data<float>(), a.data<float>(), b.data<float>(), n);
  }
  MSA_CUDA_CHECK_LAUNCH("add_kernel");
}

void scale_inplace(Tensor& y, double a) {
  const int64_t n = y.numel();
  if (n == 0) return;
  if (y.dtype() == DType::kBF16) {
    if (vec8_ok(n, {y.raw_data()}))
      scale_vec8_kernel<<<grid_blocks(n / 8), 256>>>(y.data<bf16>(), static_cast<float>(a), n / 8);
    else
      scale_kernel<<<grid_blocks(n), 256>>>(y.data<bf16>(), static_cast<float>(a), n);
  } else {
    check_dtype(y, DType::kF32, "scale_inplace (CUDA): y");
    scale_kernel<<<grid_blocks(n), 256>>>(y.data<float>(), static_cast<float>(a), n);
  }
  MSA_CUDA_CHECK_LAUNCH("scale_kernel");
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  if (n == 0) return;
  if (vec8_ok(n, {gate.raw_data(), up.raw_data(), out.raw_data()}))
    swiglu_forward_vec8_kernel<<<grid_blocks(n / 8), 256>>>(gate.data<bf16>(), up.data<bf16>(),
                                                            out.data<bf16>(), n / 8);
  else
    swiglu_forward_kernel<<<grid_blocks(n), 256>>>(gate.data<bf16>(), up.data<bf16>(),
                                                   out.data<bf16>(), n);
  MSA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  const int64_t n = gate.numel();
  if (n == 0) return;
  if (vec8_ok(n, {dout.raw_data(), gate.raw_data(), up.raw_data(), dgate.raw_data(),
                  dup.raw_data()}))
    swiglu_backward_vec8_kernel<<<grid_blocks(n / 8), 256>>>(
        dout.data<bf16>(), gate.data<bf16>(), up.data<bf16>(), dgate.data<bf16>(),
        dup.data<bf16>(), n / 8);
  else
    swiglu_backward_kernel<<<grid_blocks(n), 256>>>(dout.data<bf16>(), gate.data<bf16>(),
                                                    up.data<bf16>(), dgate.data<bf16>(),
                                                    dup.data<bf16>(), n);
  MSA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

void embedding_forward(const Tensor& tokens, const Tensor& table, int64_t vocab_begin,
                       Tensor& out) {
  const int64_t N = tokens.numel(), D = table.size(1), V = table.size(0);
  if (N == 0) return;
  embedding_forward_kernel<<<grid_blocks(N * D), 256>>>(tokens.data<int32_t>(), table.data<bf16>(),
                                                        out.data<bf16>(), N, D, vocab_begin, V);
  MSA_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

void embedding_backward(const Tensor& dout, const Tensor& tokens, int64_t vocab_begin,
                        Tensor& dtable) {
  const int64_t N = tokens.numel(), D = dtable.size(1), V = dtable.size(0);
  if (N == 0) return;
  check_dtype(dtable, DType::kF32, "embedding_backward (CUDA): dtable");
  if (deterministic()) {
    MSA_CHECK(N < (int64_t(1) << 31), "embedding_backward (CUDA): %lld tokens (> 2^31)",
              static_cast<long long>(N));
    const int n = static_cast<int>(N);
    Tensor pos = Tensor::empty({N}, DType::kI32, Device::kCUDA);
    Tensor sorted_tokens = Tensor::empty({N}, DType::kI32, Device::kCUDA);
    Tensor sorted_pos = Tensor::empty({N}, DType::kI32, Device::kCUDA);
    iota_kernel<<<grid_blocks(N), 256>>>(pos.data<int32_t>(), N);
    MSA_CUDA_CHECK_LAUNCH("iota_kernel");
    size_t bytes = 0;
    MSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, bytes, tokens.data<int32_t>(), sorted_tokens.data<int32_t>(), pos.data<int32_t>(),
        sorted_pos.data<int32_t>(), n));
    Tensor tmp = Tensor::empty({static_cast<int64_t>(bytes / 4) + 1}, DType::kI32, Device::kCUDA);
    // Radix sort is stable: equal tokens keep ascending positions, so the sum order is fixed.
    MSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        tmp.raw_data(), bytes, tokens.data<int32_t>(), sorted_tokens.data<int32_t>(),
        pos.data<int32_t>(), sorted_pos.data<int32_t>(), n));
    embedding_backward_sorted_kernel<<<grid_blocks(N * D), 256>>>(
        dout.data<bf16>(), sorted_tokens.data<int32_t>(), sorted_pos.data<int32_t>(),
        dtable.data<float>(), N, D, vocab_begin, V);
    MSA_CUDA_CHECK_LAUNCH("embedding_backward_sorted_kernel");
    return;
  }
  embedding_backward_kernel<<<grid_blocks(N * D), 256>>>(
      dout.data<bf16>(), tokens.data<int32_t>(), dtable.data<float>(), N, D, vocab_begin, V);
  MSA_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

void bias_grad_accumulate(const Tensor& dy, Tensor& dbias) {
  add_column_sums(dy.data<bf16>(), dbias.data<float>(), dy.size(0), dy.size(1));
}

}  // namespace msa::cuda
