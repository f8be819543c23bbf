// The sparse-mode index distillation loss on the GPU (math in kernels/cpu/msa_index_loss.cc),
// fed by the block masses the sparse attention forward already computed: no second pass over
// q and k. One warp per (sequence, query, group) row: lane i owns the row's i-th non-local
// selected block (|S'| <= topk - 1 <= 31), so P, the index scores, the softmax Q and the KL are
// warp reductions; diq is written per row; dkbar gathers from every row that selected a block,
// through f32 atomics (the one nondeterministic sum of the MSA path: its order varies, its value
// only in the last bits). Gradients are produced for the unnormalized sum and scaled by
// weight / n_rows once the counted rows are known.
//
// The dense-target mode (index warm-up, --dense_attention_steps) takes P over every eligible
// block j < c(t) of the dense attention, so its block masses need a pass over q and k (the
// design allows it: the mode is for warm-up at moderate lengths). dense_block_mass_kernel does
// it on tensor cores, KV-outer like the sparse forward: a CTA holds key block j of one group and
// serves a range of later queries, the r heads of a query stacked as mma rows; each row's
// sum over the block of exp(scale q.k - lse) lands in mass [b, t, h, n_b]. Then one warp per
// row forms P, Q, the KL and the gradients (dense_target_rows_kernel).
#include <algorithm>
#include <vector>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/mma_sm80.cuh"
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

// ---- dense-target mode ---------------------------------------------------------------------

constexpr int kMassWarps = 4;
constexpr int kMassQueries = 64;  // queries per CTA

// grid.x = batch * G * n_b (b, g, j), grid.y = query chunks of kMassQueries.
template <int D, int BK>
__global__ void __launch_bounds__(kMassWarps * 32)
    dense_block_mass_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                            const float* __restrict__ lse, float scale_log2,
                            float* __restrict__ mass, LossDims a) {
  constexpr int kLd = D + 8;
  __shared__ __align__(16) bf16 ks[BK * kLd];
  const int64_t j = blockIdx.x % a.nb, g = (blockIdx.x / a.nb) % a.G, b = blockIdx.x / (a.nb * a.G);
  const int64_t t_first = max((j + 1) * BK, static_cast<int64_t>(blockIdx.y) * kMassQueries);
  const int64_t t_end = min(a.S, static_cast<int64_t>(blockIdx.y + 1) * kMassQueries);
  if (t_first >= t_end) return;  // no query here has block j among its eligible blocks
  const int r = static_cast<int>(a.H / a.G);
  // Block j lies wholly before t_first (<= S): no padding or causal cut.
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < BK * kChunks; c += blockDim.x) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    *reinterpret_cast<uint4*>(ks + row * kLd + col) = *reinterpret_cast<const uint4*>(
        k + ((b * a.S + j * BK + row) * a.G + g) * D + col);
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane >> 2, tig = lane & 3;
  const int rows = static_cast<int>(t_end - t_first) * r;
  constexpr float kLog2e = 1.4426950408889634f;
  for (int tile = warp; tile * 16 < rows; tile += kMassWarps) {
    int64_t t_row[2], h_row[2];
    bool valid[2];
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int R = tile * 16 + grp + 8 * hf;
      valid[hf] = R < rows;
      t_row[hf] = t_first + (valid[hf] ? R / r : 0);
      h_row[hf] = g * r + (valid[hf] ? R % r : 0);
      const bf16* qrow = q + ((b * a.S + t_row[hf]) * a.H + h_row[hf]) * D;
#pragma unroll
      for (int ks2 = 0; ks2 < D / 16; ++ks2) {
        qa[ks2][hf] = valid[hf] ? *reinterpret_cast<const uint32_t*>(qrow + ks2 * 16 + 2 * tig) : 0u;
        qa[ks2][2 + hf] =
            valid[hf] ? *reinterpret_cast<const uint32_t*>(qrow + ks2 * 16 + 8 + 2 * tig) : 0u;
      }
    }
    float lse2[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
      lse2[hf] = valid[hf] ? lse[(b * a.H + h_row[hf]) * a.S + t_row[hf]] * kLog2e : INFINITY;
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int ks2 = 0; ks2 < D / 16; ++ks2) {
        const int l = lane % 16;
        uint32_t b0, b1;
        ldmatrix_x2(b0, b1, ks + (nt * 8 + l % 8) * kLd + ks2 * 16 + (l / 8) * 8);
        mma_bf16(sc, qa[ks2], b0, b1);
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) sum[c / 2] += fast_exp2(fmaf(sc[c], scale_log2, -lse2[c / 2]));
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      sum[hf] += __shfl_xor_sync(0xffffffffu, sum[hf], 1);
      sum[hf] += __shfl_xor_sync(0xffffffffu, sum[hf], 2);
      if (valid[hf] && tig == 0) mass[((b * a.S + t_row[hf]) * a.H + h_row[hf]) * a.nb + j] = sum[hf];
    }
  }
}

// One warp per (b, t, g) row; rows with c(t) < 2 do not count. Per-warp shared scratch: the
// row's index scores (then d score) and P for its c(t) blocks, and the r head totals.
template <class T>
__global__ void dense_target_rows_kernel(const float* __restrict__ mass, const T* __restrict__ iq,
                                         const T* __restrict__ kbar, float grad_scale,
                                         float* __restrict__ diq, float* __restrict__ dkbar,
                                         float* __restrict__ row_kl, int64_t rows, LossDims a) {
  extern __shared__ float scratch[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float* sc_s = scratch + warp * (2 * a.nb + 16);
  float* p_s = sc_s + a.nb;
  float* tot_s = p_s + a.nb;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= rows) return;
  const int64_t g = row % a.G, t = (row / a.G) % a.S, b = row / (a.G * a.S);
  const int64_t c = t / a.B, r = a.H / a.G;
  float* diq_row = diq + row * a.dI;
  if (c < 2) {
    for (int64_t e = lane; e < a.dI; e += kWarp) diq_row[e] = 0.0f;
    if (lane == 0) row_kl[row] = -INFINITY;  // not counted
    return;
  }
  const float* m_row = mass + (b * a.S + t) * a.H * a.nb;  // [h][j]
  int contributing = 0;
  for (int64_t hh = 0; hh < r; ++hh) {
    float part = 0;
    for (int64_t j = lane; j < c; j += kWarp) part += m_row[(g * r + hh) * a.nb + j];
    const float total = warp_reduce_sum(part);
    contributing += total > 0.0f;
    if (lane == 0) tot_s[hh] = total > 0.0f ? 1.0f / total : 0.0f;
  }
  __syncwarp();
  const T* iq_row = iq + row * a.dI;
  const float inv_sqrt_dI = rsqrtf(static_cast<float>(a.dI));
  float mx = -INFINITY;
  for (int64_t j = lane; j < c; j += kWarp) {
    float P = 0;
    for (int64_t hh = 0; hh < r; ++hh) P += m_row[(g * r + hh) * a.nb + j] * tot_s[hh];
    p_s[j] = contributing > 0 ? P / static_cast<float>(contributing) : 1.0f / static_cast<float>(c);
    const T* kb = kbar + ((b * a.nb + j) * a.G + g) * a.dI;
    float dot = 0;
    for (int64_t e = 0; e < a.dI; ++e) dot += load_f(iq_row, e) * load_f(kb, e);
    sc_s[j] = dot * inv_sqrt_dI;
    mx = fmaxf(mx, sc_s[j]);
  }
  mx = warp_reduce_max(mx);
  float z = 0;
  for (int64_t j = lane; j < c; j += kWarp) z += __expf(sc_s[j] - mx);
  const float log_z = mx + logf(warp_reduce_sum(z));
  float kl = 0;
  for (int64_t j = lane; j < c; j += kWarp) {
    const float log_q = sc_s[j] - log_z, P = p_s[j];
    if (P > 0.0f) kl += P * (logf(P) - log_q);
    sc_s[j] = grad_scale * (__expf(log_q) - P) * inv_sqrt_dI;  // d score
  }
  kl = warp_reduce_sum(kl);
  __syncwarp();
  for (int64_t e = lane; e < a.dI; e += kWarp) {
    const float q_e = load_f(iq_row, e);
    float acc = 0;
    for (int64_t j = 0; j < c; ++j) {
      const int64_t off = ((b * a.nb + j) * a.G + g) * a.dI + e;
      acc += sc_s[j] * load_f(kbar, off);
      atomicAdd(dkbar + off, sc_s[j] * q_e);
    }
    diq_row[e] = acc;
  }
  if (lane == 0) row_kl[row] = kl;
}

template <int D>
void launch_dense_block_mass(const Tensor& q, const Tensor& k, const Tensor& lse, float scale_log2,
                             Tensor& mass, const LossDims& a, int64_t batch) {
  const dim3 grid(static_cast<unsigned>(batch * a.G * a.nb),
                  static_cast<unsigned>((a.S + kMassQueries - 1) / kMassQueries));
  auto go = [&](auto kernel) {
    kernel<<<grid, kMassWarps * 32>>>(q.data<bf16>(), k.data<bf16>(), lse.data<float>(),
                                      scale_log2, mass.data<float>(), a);
    MSA_CUDA_CHECK_LAUNCH("dense_block_mass_kernel");
  };
  switch (a.B) {
    case 16: return go(dense_block_mass_kernel<D, 16>);
    case 32: return go(dense_block_mass_kernel<D, 32>);
    case 64: return go(dense_block_mass_kernel<D, 64>);
    default: return go(dense_block_mass_kernel<D, 128>);
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

bool dense_target_loss_supported(const Tensor& q, const cpu::MsaDims& d) {
  const int64_t r = d.groups > 0 ? d.heads / d.groups : 0;
  const size_t scratch = size_t(kWarpsPerBlock) * (2 * d.num_blocks() + 16) * sizeof(float);
  return q.dtype() == DType::kBF16 && (d.dim == 16 || d.dim == 32 || d.dim == 64 || d.dim == 128) &&
         (d.block_size == 16 || d.block_size == 32 || d.block_size == 64 ||
          d.block_size == 128) &&
         r >= 1 && r <= 16 && 16 % r == 0 && scratch <= 48 * 1024;
}

cpu::IndexLossSums msa_index_loss_dense_target(const Tensor& q, const Tensor& k, const Tensor& lse,
                                               const Tensor& iq, const Tensor& kbar, double scale,
                                               double weight, Tensor& diq, Tensor& dkbar,
                                               const cpu::MsaDims& d) {
  check_dtype(k, DType::kBF16, "msa_index_loss (dense target, CUDA): k");
  check_dtype(lse, DType::kF32, "msa_index_loss (dense target, CUDA): lse");
  check_dtype(diq, DType::kF32, "msa_index_loss (dense target, CUDA): diq");
  check_dtype(dkbar, DType::kF32, "msa_index_loss (dense target, CUDA): dkbar");
  const int64_t rows = d.batch * d.seq * d.groups;
  const LossDims a{d.seq, d.heads, d.groups, d.index_dim, d.block_size, 1, d.num_blocks()};
  // Rows with c(t) >= 2 count: known without looking at the data.
  cpu::IndexLossSums result;
  result.n_rows = d.batch * d.groups * std::max<int64_t>(0, d.seq - 2 * d.block_size);
  const float grad_scale =
      result.n_rows > 0 ? static_cast<float>(weight / static_cast<double>(result.n_rows)) : 0.0f;
  dkbar.zero_();
  if (rows == 0) return result;
  Tensor mass = Tensor::empty({d.batch * d.seq * d.heads * a.nb}, DType::kF32, Device::kCUDA);
  const float scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  switch (d.dim) {
    case 16: launch_dense_block_mass<16>(q, k, lse, scale_log2, mass, a, d.batch); break;
    case 32: launch_dense_block_mass<32>(q, k, lse, scale_log2, mass, a, d.batch); break;
    case 64: launch_dense_block_mass<64>(q, k, lse, scale_log2, mass, a, d.batch); break;
    default: launch_dense_block_mass<128>(q, k, lse, scale_log2, mass, a, d.batch); break;
  }
  Tensor row_kl = Tensor::empty({rows}, DType::kF32, Device::kCUDA);
  Tensor sums = Tensor::empty({2}, DType::kF64, Device::kCUDA);
  const unsigned blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const size_t scratch = size_t(kWarpsPerBlock) * (2 * a.nb + 16) * sizeof(float);
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    dense_target_rows_kernel<T><<<blocks, kWarp * kWarpsPerBlock, scratch>>>(
        mass.data<float>(), iq.data<T>(), kbar.data<T>(), grad_scale, diq.data<float>(),
        dkbar.data<float>(), row_kl.data<float>(), rows, a);
  };
  if (iq.dtype() == DType::kBF16) {
    check_dtype(kbar, DType::kBF16, "msa_index_loss (dense target, CUDA): kbar");
    launch(bf16{});
  } else {
    check_dtype(iq, DType::kF32, "msa_index_loss (dense target, CUDA): iq");
    check_dtype(kbar, DType::kF32, "msa_index_loss (dense target, CUDA): kbar");
    launch(float{});
  }
  MSA_CUDA_CHECK_LAUNCH("dense_target_rows_kernel");
  sum_kl_kernel<<<1, 1024>>>(row_kl.data<float>(), rows, sums.data<double>());
  MSA_CUDA_CHECK_LAUNCH("sum_kl_kernel");
  result.kl_sum = sums.to_double_vector()[0];
  return result;
}

}  // namespace msa::cuda
