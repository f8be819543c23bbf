// Softmax cross-entropy over the vocabulary (math in kernels/cpu/cross_entropy.cc). One block per
// row: a row of a 32K-150K vocabulary is 64-300 KB of bf16, enough work for a block, and its two
// passes (max, then sum of exponentials) hit L2 the second time. No [N, V] f32 buffer exists: the
// forward keeps only lse [N], and the backward overwrites the bf16 logits with their gradient.
// The loss is summed in double in a fixed order (deterministic), then read by the host.
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {
namespace {

constexpr int kThreads = 512;

// kVec: rows are read eight bf16 at a time (V % 8 == 0, aligned).
template <bool kVec>
__global__ void cross_entropy_forward_kernel(const bf16* logits, const int32_t* targets,
                                             float* lse, float* row_loss, int64_t V,
                                             int ignore_index) {
  const int64_t n = blockIdx.x;
  const bf16* row = logits + n * V;
  float mx = -INFINITY;
  if (kVec) {
    for (int64_t v = 8 * threadIdx.x; v < V; v += 8 * blockDim.x) {
      float f[8];
      load8(row + v, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, f[j]);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, load_f(row, v));
  }
  mx = block_reduce_max(mx);
  float sum = 0;
  if (kVec) {
    for (int64_t v = 8 * threadIdx.x; v < V; v += 8 * blockDim.x) {
      float f[8];
      load8(row + v, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) sum += __expf(f[j] - mx);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) sum += __expf(load_f(row, v) - mx);
  }
  sum = block_reduce_sum(sum);
  if (threadIdx.x == 0) {
    const float row_lse = mx + logf(sum);
    lse[n] = row_lse;
    const int32_t t = targets[n];
    row_loss[n] = (t == ignore_index || t < 0 || t >= V) ? 0.0f : row_lse - load_f(row, t);
  }
}

// out[0] = sum of row_loss over counted rows, out[1] = count, out[2] = rows with a target that is
// neither ignore_index nor in [0, V) (a contract violation reported by the host).
__global__ void sum_rows_kernel(const float* row_loss, const int32_t* targets, int64_t N, int64_t V,
                                int ignore_index, double* out) {
  double s = 0, c = 0, bad = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const int32_t t = targets[n];
    if (t == ignore_index) continue;
    if (t < 0 || t >= V) {
      bad += 1;
      continue;
    }
    s += row_loss[n];
    c += 1;
  }
  s = block_reduce_sum(s);
  c = block_reduce_sum(c);
  bad = block_reduce_sum(bad);
  if (threadIdx.x == 0) {
    out[0] = s;
    out[1] = c;
    out[2] = bad;
  }
}

template <bool kVec>
__global__ void cross_entropy_backward_kernel(const bf16* logits, const int32_t* targets,
                                              const float* lse, bf16* dlogits, int64_t V,
                                              int ignore_index, float row_scale) {
  const int64_t n = blockIdx.x;
  const bf16* row = logits + n * V;
  bf16* drow = dlogits + n * V;
  const int32_t t = targets[n];
  if (t == ignore_index || row_scale == 0.0f) {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) drow[v] = bf16{0};
    return;
  }
  const float l = lse[n];
  // Elementwise read-then-write by the same thread: safe when dlogits aliases logits.
  if (kVec) {
    for (int64_t v = 8 * threadIdx.x; v < V; v += 8 * blockDim.x) {
      float f[8];
      load8(row + v, f);
#pragma unroll
      for (int j = 0; j < 8; ++j) f[j] = row_scale * (__expf(f[j] - l) - (v + j == t ? 1.0f : 0.0f));
      store8(drow + v, f);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float p = __expf(load_f(row, v) - l);
      store_f(drow, v, row_scale * (p - (v == t ? 1.0f : 0.0f)));
    }
  }
}

}  // namespace

double cross_entropy_forward(const Tensor& logits, const Tensor& targets, int ignore_index,
                             Tensor& lse, int64_t* n_counted) {
  const int64_t N = logits.size(0), V = logits.size(1);
  check_dtype(logits, DType::kBF16, "cross_entropy_forward (CUDA): logits");
  check_dtype(lse, DType::kF32, "cross_entropy_forward (CUDA): lse");
  *n_counted = 0;
  if (N == 0) return 0.0;
  Tensor row_loss = Tensor::empty({N}, DType::kF32, Device::kCUDA);
  Tensor sums = Tensor::empty({3}, DType::kF64, Device::kCUDA);
  if (vec8_ok(V, {logits.raw_data()}))
    cross_entropy_forward_kernel<true><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), lse.data<float>(), row_loss.data<float>(),
        V, ignore_index);
  else
    cross_entropy_forward_kernel<false><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), lse.data<float>(), row_loss.data<float>(),
        V, ignore_index);
  MSA_CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
  sum_rows_kernel<<<1, 1024>>>(row_loss.data<float>(), targets.data<int32_t>(), N, V,
                               ignore_index, sums.data<double>());
  MSA_CUDA_CHECK_LAUNCH("sum_rows_kernel");
  const std::vector<double> host = sums.to_double_vector();
  MSA_CHECK(host[2] == 0,
            "cross_entropy_forward: %d targets are neither in [0, %d) nor ignore_index %d",
            static_cast<int64_t>(host[2]), V, ignore_index);
  *n_counted = static_cast<int64_t>(host[1]);
  return host[0];
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int ignore_index, int64_t n_counted, double dloss, Tensor& dlogits) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  const double row_scale = n_counted > 0 ? dloss / static_cast<double>(n_counted) : 0.0;
  if (vec8_ok(V, {logits.raw_data(), dlogits.raw_data()}))
    cross_entropy_backward_kernel<true><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), lse.data<float>(), dlogits.data<bf16>(), V,
        ignore_index, static_cast<float>(row_scale));
  else
    cross_entropy_backward_kernel<false><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), lse.data<float>(), dlogits.data<bf16>(), V,
        ignore_index, static_cast<float>(row_scale));
  MSA_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

}  // namespace msa::cuda
