// Softmax cross-entropy over the vocabulary (math in kernels/cpu/cross_entropy.cc). One block per
// row: a row of a 32K-150K vocabulary is 64-300 KB of bf16, enough work for a block, and its two
// passes (max, then sum of exponentials) hit L2 the second time. No [N, V] f32 buffer exists: the
// forward keeps only lse [N], and the backward overwrites the bf16 logits with their gradient.
// The loss is summed in double in a fixed order (deterministic), then read by the host.
//
// The same kernels serve a vocabulary split over tensor-parallel ranks: each rank's row pass
// writes its slice's log-sum-exp and (when the target is in its slice) the target logit; after
// the caller's all-gather / all-reduce, combine_kernel folds the slices' log-sum-exps into the
// full one on the device. The unsplit forward is the one-slice case of the same two steps.
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {
namespace {

constexpr int kThreads = 512;

// Row n of logits [N, V] (the columns [v0, v0 + V) of the vocabulary): slice_lse[n] = its
// log-sum-exp, target_logit[n] = its entry at targets[n] - v0 when in [0, V), else 0.
// kVec: rows are read eight bf16 at a time (V % 8 == 0, aligned).
template <bool kVec>
__global__ void slice_lse_kernel(const bf16* logits, const int32_t* targets, float* slice_lse,
                                 float* target_logit, int64_t V, int64_t v0) {
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
    slice_lse[n] = mx + logf(sum);
    const int64_t col = static_cast<int64_t>(targets[n]) - v0;
    target_logit[n] = (col >= 0 && col < V) ? load_f(row, col) : 0.0f;
  }
}

// lse[n] = log sum_s exp(all_lse[s, n]) over the S slices (max-shifted; exact for S = 1). One
// thread per row; lse may alias all_lse's first row (each thread reads its row before writing).
__global__ void combine_kernel(const float* all_lse, float* lse, int64_t S, int64_t N) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float mx = -INFINITY;
    for (int64_t s = 0; s < S; ++s) mx = fmaxf(mx, all_lse[s * N + n]);
    float sum = 0;
    for (int64_t s = 0; s < S; ++s) sum += expf(all_lse[s * N + n] - mx);
    lse[n] = mx + logf(sum);
  }
}

// out[0] = sum of lse - target_logit over counted rows, out[1] = count, out[2] = rows with a
// target that is neither ignore_index nor in [0, V) (a contract violation reported by the host).
__global__ void sum_rows_kernel(const float* lse, const float* target_logit, const int32_t* targets,
                                int64_t N, int64_t V, int ignore_index, double* out) {
  double s = 0, c = 0, bad = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const int32_t t = targets[n];
    if (t == ignore_index) continue;
    if (t < 0 || t >= V) {
      bad += 1;
      continue;
    }
    s += lse[n] - target_logit[n];  // the row's loss, rounded to f32 as it always was
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

// Row n's gradient over the columns [v0, v0 + V); the one-hot where targets[n] - v0 is a column.
template <bool kVec>
__global__ void cross_entropy_backward_kernel(const bf16* logits, const int32_t* targets,
                                              const float* lse, bf16* dlogits, int64_t V,
                                              int64_t v0, int ignore_index, float row_scale) {
  const int64_t n = blockIdx.x;
  const bf16* row = logits + n * V;
  bf16* drow = dlogits + n * V;
  const int32_t t = targets[n];
  if (t == ignore_index || row_scale == 0.0f) {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) drow[v] = bf16{0};
    return;
  }
  const float l = lse[n];
  const int64_t col = static_cast<int64_t>(t) - v0;  // may be outside [0, V): no one-hot here
  // Elementwise read-then-write by the same thread: safe when dlogits aliases logits.
  if (kVec) {
    for (int64_t v = 8 * threadIdx.x; v < V; v += 8 * blockDim.x) {
      float f[8];
      load8(row + v, f);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        f[j] = row_scale * (__expf(f[j] - l) - (v + j == col ? 1.0f : 0.0f));
      store8(drow + v, f);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float p = __expf(load_f(row, v) - l);
      store_f(drow, v, row_scale * (p - (v == col ? 1.0f : 0.0f)));
    }
  }
}

}  // namespace

void cross_entropy_slice_forward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                 Tensor& slice_lse, Tensor& target_logit) {
  const int64_t N = logits.size(0), V = logits.size(1);
  check_dtype(logits, DType::kBF16, "cross_entropy_slice_forward (CUDA): logits");
  check_dtype(slice_lse, DType::kF32, "cross_entropy_slice_forward (CUDA): slice_lse");
  check_dtype(target_logit, DType::kF32, "cross_entropy_slice_forward (CUDA): target_logit");
  if (N == 0) return;
  if (vec8_ok(V, {logits.raw_data()}))
    slice_lse_kernel<true><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), slice_lse.data<float>(),
        target_logit.data<float>(), V, vocab_begin);
  else
    slice_lse_kernel<false><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), slice_lse.data<float>(),
        target_logit.data<float>(), V, vocab_begin);
  MSA_CUDA_CHECK_LAUNCH("slice_lse_kernel");
}

double cross_entropy_combine(const Tensor& all_lse, const Tensor& target_logit,
                             const Tensor& targets, int64_t vocab_size, int ignore_index,
                             Tensor& lse, int64_t* n_counted) {
  const int64_t S = all_lse.size(0), N = all_lse.size(1);
  check_dtype(all_lse, DType::kF32, "cross_entropy_combine (CUDA): all_lse");
  check_dtype(target_logit, DType::kF32, "cross_entropy_combine (CUDA): target_logit");
  check_dtype(lse, DType::kF32, "cross_entropy_combine (CUDA): lse");
  *n_counted = 0;
  if (N == 0) return 0.0;
  combine_kernel<<<grid_blocks(N), 256>>>(all_lse.data<float>(), lse.data<float>(), S, N);
  MSA_CUDA_CHECK_LAUNCH("combine_kernel");
  Tensor sums = Tensor::empty({3}, DType::kF64, Device::kCUDA);
  sum_rows_kernel<<<1, 1024>>>(lse.data<float>(), target_logit.data<float>(),
                               targets.data<int32_t>(), N, vocab_size, ignore_index,
                               sums.data<double>());
  MSA_CUDA_CHECK_LAUNCH("sum_rows_kernel");
  // The step's one synchronization in the loss: the host needs the loss and the count.
  const std::vector<double> host = sums.to_double_vector();
  MSA_CHECK(host[2] == 0,
            "cross_entropy_forward: %d targets are neither in [0, %d) nor ignore_index %d",
            static_cast<int64_t>(host[2]), vocab_size, ignore_index);
  *n_counted = static_cast<int64_t>(host[1]);
  return host[0];
}

double cross_entropy_forward(const Tensor& logits, const Tensor& targets, int ignore_index,
                             Tensor& lse, int64_t* n_counted) {
  const int64_t N = logits.size(0), V = logits.size(1);
  check_dtype(lse, DType::kF32, "cross_entropy_forward (CUDA): lse");
  *n_counted = 0;
  if (N == 0) return 0.0;
  Tensor target_logit = Tensor::empty({N}, DType::kF32, Device::kCUDA);
  cross_entropy_slice_forward(logits, targets, /*vocab_begin=*/0, lse, target_logit);
  return cross_entropy_combine(lse.view({1, N}), target_logit, targets, V, ignore_index, lse,
                               n_counted);
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, int ignore_index, int64_t n_counted, double dloss,
                            Tensor& dlogits) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  const double row_scale = n_counted > 0 ? dloss / static_cast<double>(n_counted) : 0.0;
  if (vec8_ok(V, {logits.raw_data(), dlogits.raw_data()}))
    cross_entropy_backward_kernel<true><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), lse.data<float>(), dlogits.data<bf16>(), V,
        vocab_begin, ignore_index, static_cast<float>(row_scale));
  else
    cross_entropy_backward_kernel<false><<<static_cast<unsigned>(N), kThreads>>>(
        logits.data<bf16>(), targets.data<int32_t>(), lse.data<float>(), dlogits.data<bf16>(), V,
        vocab_begin, ignore_index, static_cast<float>(row_scale));
  MSA_CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
}

}  // namespace msa::cuda
