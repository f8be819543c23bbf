// The sparse-mode index distillation loss on the GPU (math in kernels/cpu/msa_index_loss.cc),
// fed by the block masses the sparse attention forward already computed: no second pass over
// q and k. One warp per (sequence, query, group) row: lane i owns the row's i-th non-local
// selected block (|S'| <= topk - 1 <= 31), so P, the index scores, the softmax Q and the KL are
// warp reductions; diq is written per row; dkbar gathers from every row that selected a block,
// through f32 atomics (the one nondeterministic sum of the MSA path: its order varies, its value
// only in the last bits). Gradients are produced for the unnormalized sum and scaled by
// weight / n_rows once the counted rows are known.
#include <algorithm>
#include <vector>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/msa_cuda.h"

namespace msa::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

struct LossDims {
  int64_t S, H, G, dI, B, K, nb;
};

template <class T>
__global__ void index_loss_rows_kernel(const float* mass, const int32_t* indices,
                                       const int32_t* counts, const T* iq, const T* kbar,
                                       float* diq, float* dkbar, float* row_kl, int64_t rows,
                                       LossDims a) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= rows) return;
  const int64_t g = row % a.G, t = (row / a.G) % a.S, b = row / (a.G * a.S);
  const int64_t c = t / a.B, r = a.H / a.G;
  const int32_t* idx = indices + row * a.K;
  const int count = counts[row];
  // Compact the non-local slots: lane i gets the i-th (ascending order kept).
  int slot = -1;
  int n = 0;
  for (int i = 0; i < count; ++i) {
    if (idx[i] == c) continue;
    if (lane == n) slot = i;
    ++n;
  }
  float* diq_row = diq + row * a.dI;
  if (n < 2) {
    for (int64_t e = lane; e < a.dI; e += kWarp) diq_row[e] = 0.0f;
    if (lane == 0) row_kl[row] = -INFINITY;  // not counted (a KL can round to slightly < 0)
    return;
  }
  const bool mine = lane < n;
  const int64_t j = mine ? idx[slot] : 0;
  // P: per head, the masses over S' renormalized; heads whose mass underflows are left out.
  float P = 0;
  int contributing = 0;
  for (int64_t h = g * r; h < (g + 1) * r; ++h) {
    const float mh = mine ? mass[((b * a.S + t) * a.H + h) * a.K + slot] : 0.0f;
    const float total = warp_reduce_sum(mh);
    if (!(total > 0.0f)) continue;
    ++contributing;
    P += mh / total;
  }
  P = contributing > 0 ? P / static_cast<float>(contributing) : 1.0f / static_cast<float>(n);
  // Index scores of the row's blocks, softmax Q, KL(P || Q).
  const T* iq_row = iq + row * a.dI;
  const T* kb = kbar + ((b * a.nb + j) * a.G + g) * a.dI;
  const float inv_sqrt_dI = rsqrtf(static_cast<float>(a.dI));
  float score = -INFINITY;
  if (mine) {
    float dot = 0;
    for (int64_t e = 0; e < a.dI; ++e) dot += load_f(iq_row, e) * load_f(kb, e);
    score = dot * inv_sqrt_dI;
  }
  const float mx = warp_reduce_max(score);
  const float z = warp_reduce_sum(mine ? __expf(score - mx) : 0.0f);
  const float log_q = score - mx - logf(z);
  const float kl = warp_reduce_sum(mine && P > 0.0f ? P * (logf(P) - log_q) : 0.0f);
  const float dscore = mine ? (__expf(log_q) - P) * inv_sqrt_dI : 0.0f;
  // diq = sum_i dscore_i kbar_{j_i}; dkbar_{j_i} += dscore_i iq (lanes own dimensions here).
  for (int64_t e0 = 0; e0 < a.dI; e0 += kWarp) {  // every lane takes part in the shuffles
    const int64_t e = e0 + lane;
    const bool in = e < a.dI;
    const float q_e = in ? load_f(iq_row, e) : 0.0f;
    float acc = 0;
    for (int i = 0; i < n; ++i) {
      const float ds = __shfl_sync(0xffffffffu, dscore, i);
      const int64_t ji = __shfl_sync(0xffffffffu, j, i);
      if (!in) continue;
      const int64_t off = ((b * a.nb + ji) * a.G + g) * a.dI + e;
      acc += ds * load_f(kbar, off);
      atomicAdd(dkbar + off, ds * q_e);
    }
    if (in) diq_row[e] = acc;
  }
  if (lane == 0) row_kl[row] = kl;
}

// out[0] = sum of the counted rows' KL, out[1] = counted rows.
__global__ void sum_kl_kernel(const float* row_kl, int64_t rows, double* out) {
  double s = 0, c = 0;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
    const float v = row_kl[i];
    if (isinf(v)) continue;
    s += v;
    c += 1;
  }
  s = block_reduce_sum(s);
  c = block_reduce_sum(c);
  if (threadIdx.x == 0) {
    out[0] = s;
    out[1] = c;
  }
}

}  // namespace

cpu::IndexLossSums msa_index_loss_from_mass(const Tensor& block_mass, const Tensor& indices,
                                            const Tensor& counts, const Tensor& iq,
                                            const Tensor& kbar, double weight, Tensor& diq,
                                            Tensor& dkbar, const cpu::MsaDims& d) {
  check_dtype(block_mass, DType::kF32, "msa_index_loss_from_mass: block_mass");
  check_dtype(diq, DType::kF32, "msa_index_loss_from_mass: diq");
  check_dtype(dkbar, DType::kF32, "msa_index_loss_from_mass: dkbar");
  MSA_CHECK(d.topk <= kWarp + 1, "msa_index_loss_from_mass: topk %d > %d", d.topk, kWarp + 1);
  const int64_t rows = d.batch * d.seq * d.groups;
  const LossDims a{d.seq, d.heads, d.groups, d.index_dim, d.block_size, d.topk, d.num_blocks()};
  dkbar.zero_();
  Tensor row_kl = Tensor::empty({std::max<int64_t>(rows, 1)}, DType::kF32, Device::kCUDA);
  Tensor sums = Tensor::empty({2}, DType::kF64, Device::kCUDA);
  const unsigned blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    index_loss_rows_kernel<T><<<blocks, kWarp * kWarpsPerBlock>>>(
        block_mass.data<float>(), indices.data<int32_t>(), counts.data<int32_t>(), iq.data<T>(),
        kbar.data<T>(), diq.data<float>(), dkbar.data<float>(), row_kl.data<float>(), rows, a);
  };
  if (rows > 0) {
    if (iq.dtype() == DType::kBF16) {
      check_dtype(kbar, DType::kBF16, "msa_index_loss_from_mass: kbar");
      launch(bf16{});
    } else {
      check_dtype(iq, DType::kF32, "msa_index_loss_from_mass: iq");
      check_dtype(kbar, DType::kF32, "msa_index_loss_from_mass: kbar");
      launch(float{});
    }
    MSA_CUDA_CHECK_LAUNCH("index_loss_rows_kernel");
  }
  sum_kl_kernel<<<1, 1024>>>(row_kl.data<float>(), rows, sums.data<double>());
  MSA_CUDA_CHECK_LAUNCH("sum_kl_kernel");
  const std::vector<double> host = sums.to_double_vector();
  cpu::IndexLossSums result;
  result.kl_sum = host[0];
  result.n_rows = static_cast<int64_t>(host[1]);
  const double grad_scale = result.n_rows > 0 ? weight / static_cast<double>(result.n_rows) : 0.0;
  scale_inplace(diq, grad_scale);
  scale_inplace(dkbar, grad_scale);
  return result;
}

}  // namespace msa::cuda
