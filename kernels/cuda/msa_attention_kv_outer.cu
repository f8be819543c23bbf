// Block-sparse attention forward, KV-outer, on tensor cores (bf16 mma.sync m16n8k16, f32
// accumulation), for head_dim 64/128 and block size 64/128.
//
// Why KV-outer: with r = H / G query heads per group (4 at H 32, G 8), a query-outer kernel reads
// k * B keys and values per query row for only 4 r FLOPs per byte, so it runs at L2 bandwidth no
// matter how fast its math is. Here each CTA owns one key block j of one group and loads its K
// and V into shared memory once, then serves every query that selected j, the r heads of a
// query stacked as rows so a warp's 16 mma rows are 16 / r queries x r heads (full tiles).
//
// The price: a query's k blocks are processed by k different CTAs, so their softmax pieces must be
// merged. Each CTA writes, per (query, head, slot), the block-normalized partial output
// O_j = sum_s softmax_j(z)_s v_s (bf16) and the block's log-sum-exp lse_j (f32); a combine pass
// then forms lse = logsumexp_j lse_j and O = sum_j exp(lse_j - lse) O_j (flash-decoding's
// split-KV merge). The partials cost 2 x (T G k r d) bf16 bytes of traffic, so queries run in
// chunks that keep the buffer under a few GB at any length (MSA_KV_OUTER_CHUNK=N forces N-query
// chunks, for tests). The combine also yields each block's
// attention mass exp(lse_j - lse) for the index distillation loss, without another pass.
//
// Work lists: for each (sequence, group, key block), the queries that selected the block and the
// slot they selected it in, built by a count / exclusive scan (CUB) / fill pass. Order inside a
// list does not matter (each (query, slot) owns its partial), so the result is deterministic.
// No wgmma / TMA yet: mma.sync reaches ~2/3 of Hopper's dense peak and needs no warpgroup
// choreography; shared memory rows are padded by 16 bytes so ldmatrix is conflict-free.
#include <cub/cub.cuh>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "kernels/cuda/msa_cuda.h"

namespace msa::cuda {
namespace {

constexpr int kWarps = 4;
// A list's query tiles are shared by up to kSplits CTAs, each taking at least kMinTilesPerCta
// consecutive tiles so the K/V load into shared memory is amortized; long lists (the early
// blocks, selected by many queries) spread over more CTAs.
constexpr int kSplits = 64;
constexpr int kMinTilesPerCta = 4;
constexpr size_t kPartialBudgetBytes = size_t(4) << 30;

struct KvDims {
  int64_t S, H, G, K, r;
  int64_t nb;
  int64_t t0, t1;  // query chunk
};

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16(lo).bits) |
         (static_cast<uint32_t>(float_to_bf16(hi).bits) << 16);
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t& r0, uint32_t& r1, const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr));
}

// ---- work lists ------------------------------------------------------------------------------

__global__ void list_count_kernel(const int32_t* indices, const int32_t* counts, int32_t* len,
                                  int64_t batch, KvDims a) {
  const int64_t n = (a.t1 - a.t0) * a.G * batch;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t g = i % a.G, tt = (i / a.G) % (a.t1 - a.t0), b = i / (a.G * (a.t1 - a.t0));
  const int64_t row = (b * a.S + a.t0 + tt) * a.G + g;
  for (int s = 0; s < counts[row]; ++s)
    atomicAdd(len + (b * a.G + g) * a.nb + indices[row * a.K + s], 1);
}

// Entry = (t << 5) | slot.
__global__ void list_fill_kernel(const int32_t* indices, const int32_t* counts,
                                 const int32_t* start, int32_t* cursor, int32_t* entries,
                                 int64_t batch, KvDims a) {
  const int64_t n = (a.t1 - a.t0) * a.G * batch;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t g = i % a.G, tt = (i / a.G) % (a.t1 - a.t0), b = i / (a.G * (a.t1 - a.t0));
  const int64_t t = a.t0 + tt;
  const int64_t row = (b * a.S + t) * a.G + g;
  for (int s = 0; s < counts[row]; ++s) {
    const int64_t list = (b * a.G + g) * a.nb + indices[row * a.K + s];
    const int32_t pos = start[list] + atomicAdd(cursor + list, 1);
    entries[pos] = static_cast<int32_t>((t << 5) | s);
  }
}

// ---- the attention kernel --------------------------------------------------------------------

template <int D, int BK>
struct Smem {
  static constexpr int kLd = D + 8;  // padded row (elements): conflict-free ldmatrix
  static constexpr size_t kBytes = size_t(2) * BK * kLd * sizeof(bf16);
};

// grid.x = batch * G * nb lists, grid.y = kSplits. Partial layout: [chunk rows (t - t0), G, K, r,
// D] bf16 and lse_part [chunk rows, G, K, r] f32.
template <int D, int BK>
__global__ void __launch_bounds__(kWarps * 32)
    kv_outer_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                            const bf16* __restrict__ v, const int32_t* __restrict__ list_start,
                            const int32_t* __restrict__ entries, float scale_log2,
                            bf16* __restrict__ part, float* __restrict__ lse_part, KvDims a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kLd = Smem<D, BK>::kLd;
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* vs = ks + BK * kLd;
  const int64_t list = blockIdx.x;
  const int64_t j = list % a.nb, g = (list / a.nb) % a.G, b = list / (a.nb * a.G);
  const int32_t begin = list_start[list], end = list_start[list + 1];
  const int rows_q = 16 / static_cast<int>(a.r);  // queries per warp tile
  const int per_cta = kWarps * rows_q;
  const int n_tiles = (end - begin + per_cta - 1) / per_cta;
  const int per_split = max(kMinTilesPerCta, (n_tiles + kSplits - 1) / kSplits);
  const int tile_begin = blockIdx.y * per_split, tile_end = min(n_tiles, tile_begin + per_split);
  if (tile_begin >= tile_end) return;

  // K_j and V_j into shared memory (zeros past the sequence end).
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < BK * kChunks; c += blockDim.x) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    const int64_t s = j * BK + row;
    uint4 kval = make_uint4(0, 0, 0, 0), vval = make_uint4(0, 0, 0, 0);
    if (s < a.S) {
      const int64_t off = ((b * a.S + s) * a.G + g) * D + col;
      kval = *reinterpret_cast<const uint4*>(k + off);
      vval = *reinterpret_cast<const uint4*>(v + off);
    }
    *reinterpret_cast<uint4*>(ks + row * kLd + col) = kval;
    *reinterpret_cast<uint4*>(vs + row * kLd + col) = vval;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int e0 = begin + tile * per_cta + warp * rows_q;
    // This thread's two rows R0 = grp, R1 = grp + 8: entry, query, slot, head.
    int64_t t_row[2];
    int slot_row[2], head_row[2];
    bool valid_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int R = grp + 8 * h;
      const int e = e0 + R / static_cast<int>(a.r);
      valid_row[h] = e < end;
      const int32_t entry = valid_row[h] ? entries[e] : 0;
      t_row[h] = entry >> 5;
      slot_row[h] = entry & 31;
      head_row[h] = R % static_cast<int>(a.r);
    }
    // Q fragments (A operand), straight from global: 16 rows x D.
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bf16* qrow =
          q + ((b * a.S + t_row[h]) * a.H + g * a.r + head_row[h]) * static_cast<int64_t>(D);
#pragma unroll
      for (int kstep = 0; kstep < D / 16; ++kstep) {
        const int col = kstep * 16 + 2 * tig;
        qa[kstep][h] = valid_row[h] ? *reinterpret_cast<const uint32_t*>(qrow + col) : 0u;
        qa[kstep][2 + h] = valid_row[h] ? *reinterpret_cast<const uint32_t*>(qrow + col + 8) : 0u;
      }
    }
    // S = Q K_j^T: 16 rows x BK keys.
    float sc[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
      for (int kstep = 0; kstep < D / 16; ++kstep) {
        const int l = lane % 16;
        uint32_t b0, b1;
        ldmatrix_x2(b0, b1, ks + (nt * 8 + l % 8) * kLd + kstep * 16 + (l / 8) * 8);
        mma_bf16(sc[nt], qa[kstep], b0, b1);
      }
    }
    // Mask (causal inside the query's own block, and the sequence end), row max and sum.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int h = c / 2;
        const int64_t s = j * BK + nt * 8 + 2 * tig + (c & 1);
        if (s > t_row[h] || s >= a.S) sc[nt][c] = -INFINITY;
        mx[h] = fmaxf(mx[h], sc[nt][c]);
      }
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      if (mx[h] == -INFINITY) mx[h] = 0.0f;  // padding rows: keep NaNs out
    }
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int h = c / 2;
        sc[nt][c] = exp2f((sc[nt][c] - mx[h]) * scale_log2);
        sum[h] += sc[nt][c];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
    }
    // O = P V_j, P taken from the S accumulators as A fragments (two key tiles per k-step).
    float oc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) oc[nt][0] = oc[nt][1] = oc[nt][2] = oc[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
      pa[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
      pa[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pa[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        const int l = lane % 16;
        uint32_t b0, b1;
        ldmatrix_x2_trans(b0, b1, vs + (kk * 16 + l) * kLd + nt * 8);
        mma_bf16(oc[nt], pa, b0, b1);
      }
    }
    // Block-normalized partial output and the block's log-sum-exp.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (!valid_row[h]) continue;
      const int64_t prow =
          (((t_row[h] - a.t0) * a.G + g) * a.K + slot_row[h]) * a.r + head_row[h];
      const float inv = 1.0f / sum[h];
      bf16* dst = part + prow * D;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
        *reinterpret_cast<uint32_t*>(dst + nt * 8 + 2 * tig) =
            pack_bf16(oc[nt][2 * h] * inv, oc[nt][2 * h + 1] * inv);
      if (tig == 0) lse_part[prow] = (mx[h] * scale_log2 + log2f(sum[h])) * 0.69314718056f;
    }
  }
}

// One warp per (sequence, query, head): merges the query's slots into out and lse, and writes
// each slot's attention mass exp(lse_j - lse) when asked.
template <int D>
__global__ void combine_kernel(const bf16* __restrict__ part, const float* __restrict__ lse_part,
                               const int32_t* __restrict__ counts, bf16* __restrict__ out,
                               float* __restrict__ lse, float* __restrict__ block_mass,
                               int64_t batch, KvDims a) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = batch * (a.t1 - a.t0) * a.H;
  const int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + warp;
  if (w >= n) return;
  const int64_t h = w % a.H, tt = (w / a.H) % (a.t1 - a.t0), b = w / (a.H * (a.t1 - a.t0));
  const int64_t t = a.t0 + tt, g = h / a.r, hh = h % a.r;
  const int count = counts[(b * a.S + t) * a.G + g];
  // Partials are indexed by chunk row (b folded in: chunks run per sequence).
  const int64_t base = (tt * a.G + g) * a.K;
  float m = -INFINITY;
  for (int s = 0; s < count; ++s) m = fmaxf(m, lse_part[(base + s) * a.r + hh]);
  float z = 0;
  for (int s = 0; s < count; ++s) z += __expf(lse_part[(base + s) * a.r + hh] - m);
  const float row_lse = m + logf(z);
  constexpr int kPer = D / 32;
  float acc[kPer] = {0};
  for (int s = 0; s < count; ++s) {
    const float wgt = __expf(lse_part[(base + s) * a.r + hh] - row_lse);
    const bf16* p = part + ((base + s) * a.r + hh) * D + lane * kPer;
#pragma unroll
    for (int e = 0; e < kPer; ++e) acc[e] += wgt * bf16_to_float(p[e]);
  }
  bf16* o = out + ((b * a.S + t) * a.H + h) * D + lane * kPer;
#pragma unroll
  for (int e = 0; e < kPer; ++e) o[e] = float_to_bf16(acc[e]);
  if (lane == 0) lse[(b * a.H + h) * a.S + t] = row_lse;
  if (block_mass != nullptr && lane < a.K)
    block_mass[((b * a.S + t) * a.H + h) * a.K + lane] =
        lane < count ? __expf(lse_part[(base + lane) * a.r + hh] - row_lse) : 0.0f;
}

template <int D, int BK>
void run_kv_outer(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& indices,
                  const Tensor& counts, double scale, Tensor& out, Tensor& lse,
                  Tensor* block_mass, const cpu::MsaDims& d) {
  const int64_t r = d.heads / d.groups, nb = d.num_blocks();
  const size_t smem = Smem<D, BK>::kBytes;
  static bool configured = false;
  if (!configured) {
    MSA_CUDA_CHECK(cudaFuncSetAttribute(kv_outer_forward_kernel<D, BK>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    configured = true;
  }
  // Query chunks: the partial buffer holds (chunk rows x G x K x r x D) bf16.
  const size_t per_query = static_cast<size_t>(d.groups * d.topk * r * D * sizeof(bf16));
  int64_t chunk = std::max<int64_t>(BK, static_cast<int64_t>(kPartialBudgetBytes / per_query));
  if (const char* c = std::getenv("MSA_KV_OUTER_CHUNK")) chunk = std::max<int64_t>(BK, std::atoll(c));
  chunk = std::min<int64_t>(chunk / BK * BK, d.seq);
  const int64_t lists = d.groups * nb;
  Tensor part = Tensor::empty({chunk * d.groups * d.topk * r * D}, DType::kBF16, Device::kCUDA);
  Tensor lse_part = Tensor::empty({chunk * d.groups * d.topk * r}, DType::kF32, Device::kCUDA);
  Tensor len = Tensor::empty({lists + 1}, DType::kI32, Device::kCUDA);
  Tensor start = Tensor::empty({lists + 1}, DType::kI32, Device::kCUDA);
  Tensor cursor = Tensor::empty({lists}, DType::kI32, Device::kCUDA);
  Tensor entries = Tensor::empty({chunk * d.groups * d.topk}, DType::kI32, Device::kCUDA);
  size_t scan_bytes = 0;
  MSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, len.data<int32_t>(),
                                               start.data<int32_t>(), static_cast<int>(lists + 1)));
  Tensor scan_tmp = Tensor::empty({static_cast<int64_t>(scan_bytes) + 1}, DType::kI32,
                                  Device::kCUDA);
  const float scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  for (int64_t b = 0; b < d.batch; ++b) {
    const Tensor qb = q.slice0(b, b + 1), kb = k.slice0(b, b + 1), vb = v.slice0(b, b + 1);
    for (int64_t t0 = 0; t0 < d.seq; t0 += chunk) {
      const KvDims a{d.seq, d.heads, d.groups, d.topk, r, nb, t0, std::min(d.seq, t0 + chunk)};
      const int64_t rows = (a.t1 - a.t0) * d.groups;
      const int32_t* idx = indices.data<int32_t>() + b * d.seq * d.groups * d.topk;
      const int32_t* cnt = counts.data<int32_t>() + b * d.seq * d.groups;
      // Work lists for this chunk (indices and counts offset to sequence b: batch = 1 below).
      MSA_CUDA_CHECK(cudaMemsetAsync(len.raw_data(), 0, (lists + 1) * sizeof(int32_t), nullptr));
      MSA_CUDA_CHECK(cudaMemsetAsync(cursor.raw_data(), 0, lists * sizeof(int32_t), nullptr));
      const unsigned grid_rows = static_cast<unsigned>((rows + 255) / 256);
      list_count_kernel<<<grid_rows, 256>>>(idx, cnt, len.data<int32_t>(), 1, a);
      MSA_CUDA_CHECK_LAUNCH("list_count_kernel");
      MSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_tmp.raw_data(), scan_bytes,
                                                   len.data<int32_t>(), start.data<int32_t>(),
                                                   static_cast<int>(lists + 1)));
      list_fill_kernel<<<grid_rows, 256>>>(idx, cnt, start.data<int32_t>(),
                                           cursor.data<int32_t>(), entries.data<int32_t>(), 1, a);
      MSA_CUDA_CHECK_LAUNCH("list_fill_kernel");
      const dim3 grid(static_cast<unsigned>(lists), kSplits);
      kv_outer_forward_kernel<D, BK><<<grid, kWarps * 32, smem>>>(
          qb.data<bf16>(), kb.data<bf16>(), vb.data<bf16>(), start.data<int32_t>(),
          entries.data<int32_t>(), scale_log2, part.data<bf16>(), lse_part.data<float>(), a);
      MSA_CUDA_CHECK_LAUNCH("kv_outer_forward_kernel");
      Tensor ob = out.slice0(b, b + 1), lb = lse.slice0(b, b + 1);
      float* mass = block_mass != nullptr ? block_mass->slice0(b, b + 1).data<float>() : nullptr;
      const int64_t warps = (a.t1 - a.t0) * d.heads;
      combine_kernel<D><<<static_cast<unsigned>((warps + 7) / 8), 256>>>(
          part.data<bf16>(), lse_part.data<float>(), cnt, ob.data<bf16>(), lb.data<float>(),
          mass, 1, a);
      MSA_CUDA_CHECK_LAUNCH("combine_kernel");
    }
  }
}

// ---- backward ----------------------------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// One CTA per (key block j, group) list, BK / 16 warps, warp w owning keys w*16 .. w*16+15 of
// the block: for each tile of 16 query rows (16 / r queries x r heads) that selected j, with
// P = exp(scale QK^T - lse) from the forward's final lse and D = rowsum(dO * O):
//   S^T = K_w Q^T, dP^T = V_w dO^T, dS^T = P^T (dP^T - D)            (keys as mma rows)
//   dV_w += P^T dO, dK_w += dS^T Q                                   (registers, whole list)
//   dQ_tile = dS K_j, dS staged in shared memory, warp w computing D / warps of the dims
// The next tile's rows are loaded into registers while the current one computes (the loads'
// latency, not the math, bounds a 16-row tile).
// dK and dV of a key are owned by the one CTA of its block: no global atomics. dQ of a (query,
// slot) goes to its own partial row, summed over slots by dq_combine_kernel. dK/dV accumulate in
// f32 across query chunks (dk_acc, dv_acc).
template <int D, int BK>
struct BwdSmem {
  static constexpr int kLd = D + 8;
  static constexpr size_t kBytes = size_t(2) * BK * kLd * sizeof(bf16)     // K, V
                                   + size_t(2) * 16 * kLd * sizeof(bf16)   // Q, dO tiles
                                   + size_t(16) * (BK + 8) * sizeof(bf16)  // dS tile
                                   + size_t(3) * 16 * sizeof(float)        // lse, Dsum, t
                                   ;
};

template <int D, int BK>
__global__ void __launch_bounds__(BK / 16 * 32)
    kv_outer_backward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                             const bf16* __restrict__ v, const bf16* __restrict__ dout,
                             const float* __restrict__ lse, const float* __restrict__ dsum,
                             const int32_t* __restrict__ list_start,
                             const int32_t* __restrict__ entries, float scale,
                             bf16* __restrict__ dq_part, float* __restrict__ dk_acc,
                             float* __restrict__ dv_acc, KvDims a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kLd = BwdSmem<D, BK>::kLd;
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* vs = ks + BK * kLd;
  bf16* qs = vs + BK * kLd;
  bf16* dos = qs + 16 * kLd;
  constexpr int kLdS = BK + 8;
  bf16* ds_s = dos + 16 * kLd;  // dS [tile row][key]
  float* lse_s = reinterpret_cast<float*>(ds_s + 16 * kLdS);  // lse * log2(e) per tile row
  float* dsum_s = lse_s + 16;
  int* t_s = reinterpret_cast<int*>(dsum_s + 16);
  const float scale_log2 = scale * 1.4426950408889634f;

  // Heavy lists first: blockIdx.x enumerates j slowest.
  const int64_t g = blockIdx.x % a.G, j = blockIdx.x / a.G;
  const int64_t list = g * a.nb + j;
  const int32_t begin = list_start[list], end = list_start[list + 1];
  const int r = static_cast<int>(a.r), rows_q = 16 / r;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  const int l16 = lane % 16;
  constexpr int kWarpsBwd = BK / 16;

  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < BK * kChunks; c += blockDim.x) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    const int64_t s = j * BK + row;
    uint4 kval = make_uint4(0, 0, 0, 0), vval = make_uint4(0, 0, 0, 0);
    if (s < a.S) {
      const int64_t off = (s * a.G + g) * D + col;
      kval = *reinterpret_cast<const uint4*>(k + off);
      vval = *reinterpret_cast<const uint4*>(v + off);
    }
    *reinterpret_cast<uint4*>(ks + row * kLd + col) = kval;
    *reinterpret_cast<uint4*>(vs + row * kLd + col) = vval;
  }

  float dk_c[D / 8][4], dv_c[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) dk_c[nt][c] = dv_c[nt][c] = 0.0f;

  // Register prefetch of a tile: this thread's 16-byte pieces of Q and dO, and (threads < 16)
  // one row's lse, D and t.
  constexpr int kPieces = (16 * kChunks + kWarpsBwd * 32 - 1) / (kWarpsBwd * 32);
  uint4 pq[kPieces], pdo[kPieces];
  float p_lse = INFINITY, p_dsum = 0.0f;
  int p_t = -1;
  auto prefetch = [&](int tile) {
    const int e0 = begin + tile * rows_q;
#pragma unroll
    for (int i = 0; i < kPieces; ++i) {
      const int c = threadIdx.x + i * kWarpsBwd * 32;
      pq[i] = pdo[i] = make_uint4(0, 0, 0, 0);
      if (c >= 16 * kChunks) continue;
      const int R = c / kChunks, col = (c % kChunks) * 8;
      const int e = e0 + R / r;
      if (e < end) {
        const int64_t t = entries[e] >> 5;
        const int64_t off = (t * a.H + g * r + R % r) * D + col;
        pq[i] = *reinterpret_cast<const uint4*>(q + off);
        pdo[i] = *reinterpret_cast<const uint4*>(dout + off);
      }
    }
    if (threadIdx.x < 16) {
      const int R = threadIdx.x, e = e0 + R / r;
      if (e < end) {
        const int64_t t = entries[e] >> 5, h = g * r + R % r;
        p_lse = lse[h * a.S + t] * 1.4426950408889634f;
        p_dsum = dsum[h * a.S + t];
        p_t = static_cast<int>(t);
      } else {
        p_lse = INFINITY;  // exp2(x - inf) = 0: padding rows contribute nothing
        p_dsum = 0.0f;
        p_t = -1;
      }
    }
  };

  const int n_tiles = (end - begin + rows_q - 1) / rows_q;
  if (n_tiles > 0) prefetch(0);
  for (int tile = 0; tile < n_tiles; ++tile) {
    __syncthreads();  // the previous tile is done with qs, dos, ds_s and the row data
#pragma unroll
    for (int i = 0; i < kPieces; ++i) {
      const int c = threadIdx.x + i * kWarpsBwd * 32;
      if (c >= 16 * kChunks) continue;
      const int R = c / kChunks, col = (c % kChunks) * 8;
      *reinterpret_cast<uint4*>(qs + R * kLd + col) = pq[i];
      *reinterpret_cast<uint4*>(dos + R * kLd + col) = pdo[i];
    }
    if (threadIdx.x < 16) {
      lse_s[threadIdx.x] = p_lse;
      dsum_s[threadIdx.x] = p_dsum;
      t_s[threadIdx.x] = p_t;
    }
    __syncthreads();
    if (tile + 1 < n_tiles) prefetch(tile + 1);
    const int e0 = begin + tile * rows_q;

    // S^T and dP^T for this warp's 16 keys x the tile's 16 rows.
    float st[2][4], dpt[2][4];
#pragma unroll
    for (int nq = 0; nq < 2; ++nq)
#pragma unroll
      for (int c = 0; c < 4; ++c) st[nq][c] = dpt[nq][c] = 0.0f;
#pragma unroll
    for (int kstep = 0; kstep < D / 16; ++kstep) {
      uint32_t ka[4], va[4];
      const int arow = warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2),
                acol = kstep * 16 + 8 * (lane / 16);
      ldmatrix_x4(ka, ks + arow * kLd + acol);
      ldmatrix_x4(va, vs + arow * kLd + acol);
#pragma unroll
      for (int nq = 0; nq < 2; ++nq) {
        uint32_t b0, b1;
        ldmatrix_x2(b0, b1, qs + (nq * 8 + l16 % 8) * kLd + kstep * 16 + (l16 / 8) * 8);
        mma_bf16(st[nq], ka, b0, b1);
        ldmatrix_x2(b0, b1, dos + (nq * 8 + l16 % 8) * kLd + kstep * 16 + (l16 / 8) * 8);
        mma_bf16(dpt[nq], va, b0, b1);
      }
    }
    // P^T and dS^T (C layout: row = key grp / grp+8, column = tile row nq*8 + 2 tig + {0,1}).
    float pt[2][4], dst[2][4];
#pragma unroll
    for (int nq = 0; nq < 2; ++nq)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int R = nq * 8 + 2 * tig + (c & 1);
        const int key = warp * 16 + grp + 8 * (c / 2);
        const int64_t s = j * BK + key;
        const bool keep = t_s[R] >= 0 && s <= t_s[R] && s < a.S;
        const float p = keep ? exp2f(st[nq][c] * scale_log2 - lse_s[R]) : 0.0f;
        pt[nq][c] = p;
        dst[nq][c] = p * (dpt[nq][c] - dsum_s[R]);
        ds_s[R * kLdS + key] = float_to_bf16(dst[nq][c]);
      }
    // dV_w += P^T dO, dK_w += dS^T Q (A = the keys x rows tiles as they are).
    uint32_t pa[4], da[4];
    pa[0] = pack_bf16(pt[0][0], pt[0][1]);
    pa[1] = pack_bf16(pt[0][2], pt[0][3]);
    pa[2] = pack_bf16(pt[1][0], pt[1][1]);
    pa[3] = pack_bf16(pt[1][2], pt[1][3]);
    da[0] = pack_bf16(dst[0][0], dst[0][1]);
    da[1] = pack_bf16(dst[0][2], dst[0][3]);
    da[2] = pack_bf16(dst[1][0], dst[1][1]);
    da[3] = pack_bf16(dst[1][2], dst[1][3]);
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      uint32_t b0, b1;
      ldmatrix_x2_trans(b0, b1, dos + l16 * kLd + nt * 8);
      mma_bf16(dv_c[nt], pa, b0, b1);
      ldmatrix_x2_trans(b0, b1, qs + l16 * kLd + nt * 8);
      mma_bf16(dk_c[nt], da, b0, b1);
    }
    __syncthreads();  // dS complete
    // dQ_tile = dS K_j: warp w computes dims [w D / warps, (w + 1) D / warps).
    constexpr int kDimsPerWarp = D / kWarpsBwd, kNt = kDimsPerWarp / 8;
    float qc[kNt][4];
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) qc[nt][0] = qc[nt][1] = qc[nt][2] = qc[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t a4[4];
      ldmatrix_x4(a4, ds_s + ((lane % 8) + 8 * ((lane / 8) % 2)) * kLdS + kk * 16 + 8 * (lane / 16));
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) {
        uint32_t b0, b1;
        ldmatrix_x2_trans(b0, b1, ks + (kk * 16 + l16) * kLd + warp * kDimsPerWarp + nt * 8);
        mma_bf16(qc[nt], a4, b0, b1);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int R = grp + 8 * h;
      const int e = e0 + R / r;
      if (e >= end) continue;
      const int32_t entry = entries[e];
      const int64_t t = entry >> 5, slot = entry & 31;
      const int64_t prow = (((t - a.t0) * a.G + g) * a.K + slot) * a.r + R % r;
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt)
        *reinterpret_cast<uint32_t*>(dq_part + prow * D + warp * kDimsPerWarp + nt * 8 + 2 * tig) =
            pack_bf16(qc[nt][2 * h] * scale, qc[nt][2 * h + 1] * scale);
    }
  }
  // This warp's 16 keys: add into the f32 accumulators (this CTA is their only writer).
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t s = j * BK + warp * 16 + grp + 8 * (c / 2);
      if (s >= a.S) continue;
      const int64_t off = (s * a.G + g) * D + nt * 8 + 2 * tig + (c & 1);
      dk_acc[off] += dk_c[nt][c] * scale;
      dv_acc[off] += dv_c[nt][c];
    }
}

// dq[t, h] = sum over the query's slots of its partial rows (one warp per (t, h)).
template <int D>
__global__ void dq_combine_kernel(const bf16* __restrict__ part, const int32_t* __restrict__ counts,
                                  bf16* __restrict__ dq, KvDims a) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = (a.t1 - a.t0) * a.H;
  const int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + warp;
  if (w >= n) return;
  const int64_t h = w % a.H, tt = w / a.H, t = a.t0 + tt, g = h / a.r, hh = h % a.r;
  const int count = counts[t * a.G + g];
  constexpr int kPer = D / 32;
  float acc[kPer] = {0};
  for (int s = 0; s < count; ++s) {
    const bf16* p = part + (((tt * a.G + g) * a.K + s) * a.r + hh) * D + lane * kPer;
#pragma unroll
    for (int e = 0; e < kPer; ++e) acc[e] += bf16_to_float(p[e]);
  }
  bf16* o = dq + (t * a.H + h) * D + lane * kPer;
#pragma unroll
  for (int e = 0; e < kPer; ++e) o[e] = float_to_bf16(acc[e]);
}

__global__ void f32_to_bf16_kernel(const float* src, bf16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = float_to_bf16(src[i]);
}

template <int D, int BK>
void run_kv_outer_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                           const Tensor& v, const Tensor& dsum_all, const Tensor& lse,
                           const Tensor& indices, const Tensor& counts, double scale, Tensor& dq,
                           Tensor& dk, Tensor& dv, const cpu::MsaDims& d) {
  const int64_t r = d.heads / d.groups, nb = d.num_blocks();
  const size_t smem = BwdSmem<D, BK>::kBytes;
  static bool configured = false;
  if (!configured) {
    MSA_CUDA_CHECK(cudaFuncSetAttribute(kv_outer_backward_kernel<D, BK>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    configured = true;
  }
  const size_t per_query = static_cast<size_t>(d.groups * d.topk * r * D * sizeof(bf16));
  int64_t chunk = std::max<int64_t>(BK, static_cast<int64_t>(kPartialBudgetBytes / per_query));
  if (const char* c = std::getenv("MSA_KV_OUTER_CHUNK")) chunk = std::max<int64_t>(BK, std::atoll(c));
  chunk = std::min<int64_t>(chunk / BK * BK, d.seq);
  const int64_t lists = d.groups * nb;
  Tensor part = Tensor::empty({chunk * d.groups * d.topk * r * D}, DType::kBF16, Device::kCUDA);
  Tensor len = Tensor::empty({lists + 1}, DType::kI32, Device::kCUDA);
  Tensor start = Tensor::empty({lists + 1}, DType::kI32, Device::kCUDA);
  Tensor cursor = Tensor::empty({lists}, DType::kI32, Device::kCUDA);
  Tensor entries = Tensor::empty({chunk * d.groups * d.topk}, DType::kI32, Device::kCUDA);
  Tensor dk_acc = Tensor::empty({d.seq * d.groups * D}, DType::kF32, Device::kCUDA);
  Tensor dv_acc = Tensor::empty({d.seq * d.groups * D}, DType::kF32, Device::kCUDA);
  size_t scan_bytes = 0;
  MSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, len.data<int32_t>(),
                                               start.data<int32_t>(), static_cast<int>(lists + 1)));
  Tensor scan_tmp = Tensor::empty({static_cast<int64_t>(scan_bytes) + 1}, DType::kI32,
                                  Device::kCUDA);
  for (int64_t b = 0; b < d.batch; ++b) {
    const int32_t* idx = indices.data<int32_t>() + b * d.seq * d.groups * d.topk;
    const int32_t* cnt = counts.data<int32_t>() + b * d.seq * d.groups;
    const bf16* qb = q.data<bf16>() + b * d.seq * d.heads * D;
    const bf16* dob = dout.data<bf16>() + b * d.seq * d.heads * D;
    const bf16* kb = k.data<bf16>() + b * d.seq * d.groups * D;
    const bf16* vb = v.data<bf16>() + b * d.seq * d.groups * D;
    const float* lb = lse.data<float>() + b * d.heads * d.seq;
    const float* db = dsum_all.data<float>() + b * d.heads * d.seq;
    dk_acc.zero_();
    dv_acc.zero_();
    for (int64_t t0 = 0; t0 < d.seq; t0 += chunk) {
      const KvDims a{d.seq, d.heads, d.groups, d.topk, r, nb, t0, std::min(d.seq, t0 + chunk)};
      const int64_t rows = (a.t1 - a.t0) * d.groups;
      MSA_CUDA_CHECK(cudaMemsetAsync(len.raw_data(), 0, (lists + 1) * sizeof(int32_t), nullptr));
      MSA_CUDA_CHECK(cudaMemsetAsync(cursor.raw_data(), 0, lists * sizeof(int32_t), nullptr));
      const unsigned grid_rows = static_cast<unsigned>((rows + 255) / 256);
      list_count_kernel<<<grid_rows, 256>>>(idx, cnt, len.data<int32_t>(), 1, a);
      MSA_CUDA_CHECK_LAUNCH("list_count_kernel");
      MSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_tmp.raw_data(), scan_bytes,
                                                   len.data<int32_t>(), start.data<int32_t>(),
                                                   static_cast<int>(lists + 1)));
      list_fill_kernel<<<grid_rows, 256>>>(idx, cnt, start.data<int32_t>(),
                                           cursor.data<int32_t>(), entries.data<int32_t>(), 1, a);
      MSA_CUDA_CHECK_LAUNCH("list_fill_kernel");
      kv_outer_backward_kernel<D, BK><<<static_cast<unsigned>(lists), BK / 16 * 32, smem>>>(
          qb, kb, vb, dob, lb, db, start.data<int32_t>(), entries.data<int32_t>(),
          static_cast<float>(scale), part.data<bf16>(), dk_acc.data<float>(),
          dv_acc.data<float>(), a);
      MSA_CUDA_CHECK_LAUNCH("kv_outer_backward_kernel");
      const int64_t warps = (a.t1 - a.t0) * d.heads;
      dq_combine_kernel<D><<<static_cast<unsigned>((warps + 7) / 8), 256>>>(
          part.data<bf16>(), cnt, dq.data<bf16>() + b * d.seq * d.heads * D, a);
      MSA_CUDA_CHECK_LAUNCH("dq_combine_kernel");
    }
    const int64_t n = d.seq * d.groups * D;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
    f32_to_bf16_kernel<<<blocks, 256>>>(dk_acc.data<float>(), dk.data<bf16>() + b * n, n);
    MSA_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
    f32_to_bf16_kernel<<<blocks, 256>>>(dv_acc.data<float>(), dv.data<bf16>() + b * n, n);
    MSA_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
  }
}

}  // namespace

bool kv_outer_attention_supported(const Tensor& q, const cpu::MsaDims& d) {
  const char* force = std::getenv("MSA_SPARSE_ATTENTION");
  if (force != nullptr && std::strcmp(force, "reference") == 0) return false;
  const int64_t r = d.groups > 0 ? d.heads / d.groups : 0;
  return q.dtype() == DType::kBF16 && (d.dim == 64 || d.dim == 128) &&
         (d.block_size == 64 || d.block_size == 128) && r >= 1 && 16 % r == 0 && d.topk <= 32 &&
         d.seq < (int64_t(1) << 26);
}

void kv_outer_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& indices, const Tensor& counts, double scale,
                                Tensor& out, Tensor& lse, Tensor* block_mass,
                                const cpu::MsaDims& d) {
  if (d.dim == 128 && d.block_size == 128)
    run_kv_outer<128, 128>(q, k, v, indices, counts, scale, out, lse, block_mass, d);
  else if (d.dim == 128)
    run_kv_outer<128, 64>(q, k, v, indices, counts, scale, out, lse, block_mass, d);
  else if (d.block_size == 128)
    run_kv_outer<64, 128>(q, k, v, indices, counts, scale, out, lse, block_mass, d);
  else
    run_kv_outer<64, 64>(q, k, v, indices, counts, scale, out, lse, block_mass, d);
}

}  // namespace msa::cuda

namespace msa::cuda {

void kv_outer_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& dsum, const Tensor& lse,
                                 const Tensor& indices, const Tensor& counts, double scale,
                                 Tensor& dq, Tensor& dk, Tensor& dv, const cpu::MsaDims& d) {
  if (d.dim == 128 && d.block_size == 128)
    run_kv_outer_backward<128, 128>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d);
  else if (d.dim == 128)
    run_kv_outer_backward<128, 64>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d);
  else if (d.block_size == 128)
    run_kv_outer_backward<64, 128>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d);
  else
    run_kv_outer_backward<64, 64>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d);
}

}  // namespace msa::cuda
