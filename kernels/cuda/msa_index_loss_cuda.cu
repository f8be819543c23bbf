// Token-level index distillation loss on the GPU (contract in kernels/msa.h, math in
// kernels/cpu/msa_index_loss.cc), both modes, on tensor cores (bf16 mma.sync m16n8k16, f32
// accumulation). Row (b, t, g), support U (sparse: the tokens s <= p of the selected blocks;
// dense target: every s <= p), p = query_offset + t the query's position:
//   P_s = (1/r) sum_h exp(scale q_{t,h}.k_s - lse_{t,h}) (teacher), S_s = iq_{t,g}.ik_s / sqrt(dI),
//   lseQ = logsumexp_U S, Q_s = exp(S_s - lseQ),
//   KL = sum_U P' log P' - sum_U P' S + lseQ with P' = P / sum_U P (sum_U P = 1 up to rounding
//   when lse is the main branch's over the same support; dividing keeps KL >= 0 regardless),
//   dS_s = weight (Q_s - P_s) / n_rows (P as given), diq += dS ik / sqrt(dI), dik += dS iq /
//   sqrt(dI).
//
// The teacher (r heads of q.k, r d multiply-adds per (t, s)) dominates: 16x the student's at
// H 64, G 4, d = dI = 128. So it runs exactly once, in a pass that already knows lseQ and can
// form Q and the gradients on the spot:
//
//   pass A (student only, cheap): lseQ per row.
//     sparse: KV-outer over the attention's work lists (kv_outer::build_work_lists: per (group g,
//       key block j) the query tokens that selected j, entry (t << 5) | slot).
//       student_lse_sparse_kernel: a CTA holds ik_j (BK x dI) in shared memory and streams the
//       list's iq rows, 4 warps x 16 tokens per tile (tokens as mma rows, all BK keys per warp:
//       S = iq ik_j^T in registers), and writes per (t, g, slot) the masked max and sum of 2^S
//       (log2 units); lse_combine_kernel merges a row's slots into lseQ.
//     dense: student_lse_dense_kernel, query-outer flash style: rows (t, g) stacked (iq is
//       contiguous in them and ik is shared by the groups), 4 warps x 16 rows, key tiles of 64
//       double-buffered in shared memory, online max / sum; no T x T or T x n_b buffer.
//
//   pass B (loss_grad_kernel, teacher + student + gradients), KV-outer, keys as mma rows (the
//     attention backward's shape): a CTA owns key block j of group g, BK / 16 warps, warp w
//     holding keys 16w .. 16w + 15; K_j (BK x d) and ik_j (BK x dI) stay in shared memory for the
//     whole work item. Its tokens come in tiles of 32 (sparse: a piece of j's work list, cut by
//     find_work_item; dense: the implicit list of positions >= jB, 256 tokens per CTA). Per tile:
//       for each head h of the group (the q rows of up to 4 heads per stage, cp.async
//       double-buffered, one __syncthreads per stage: one per tile at r <= 4, B = 128):
//       Z^T = K_w q_h^T (16 keys x 32 tokens), P^T += 2^(Z scale log2e -
//       lse_h log2e) in registers -- any r works, the heads add elementwise;
//       S^T = ik_w iq^T, masks (key <= off + t - jB), Q, dS = Q - P; per token the sums of P log P,
//       P S and P (cross-warp through shared memory; sparse: one partial per (t, g, slot),
//       dense: f32 atomics per row);
//       dik_w += dS^T iq (registers for the whole work item: 16 keys x dI per warp);
//       dS^T -> shared memory (dik's A fragments, stored as they are), then diq_tile = dS ik_j
//       (transposed loads of dS^T; warps split 16 x 16 output pieces) added to
//       diq with f32 atomics (a (t, g) row gets one add per selected block, sparse; one per key
//       block s <= off + t, dense: the flash-attention-2 dQ scheme).
//     At the end dik_w goes to dik with f32 atomics (the work items of a list and the G groups
//     share ik). dS enters both gradient mmas split into bf16 hi + lo parts (two mmas each), so
//     the gradients carry ~16 mantissa bits (f32-like) instead of bf16's 8, for 2 x 4 dI
//     multiply-adds per (t, s) against the teacher's r d.
//   kl_combine_kernel: per row KL from the partial sums and lseQ; reduce_rows_kernel +
//   reduce_final_kernel: the sum over rows in double, a fixed tree (deterministic).
//
// Determinism: lseQ, the sparse KL and the sum are deterministic; diq, dik and the dense mode's
// per-row sums are f32 atomics (the order varies: last-bit differences between runs). In
// deterministic mode (core/deterministic.h) each contribution goes to its own slot instead --
// sparse: diq per (t, g, slot), dik per (work item, key); dense: per key block j (launches of a
// few blocks at a time) for diq and the row sums, per CTA (j, c, g) for dik -- and small kernels
// add the slots in a fixed order (GradArgs). The work lists are sorted too (build_work_lists), so
// the tiles, and with them the in-CTA sums, are the same on every run.
// Queries run in chunks (sparse; the work lists and partials are per chunk) sized by a memory
// budget, whole short sequences several per launch as the attention's (sharing its work lists);
// dense mode takes the whole batch in one launch (deterministic mode: one sequence per launch).
// MSA_INDEX_LOSS_CHUNK=N forces N-token chunks (tests), and MSA_INDEX_LOSS_DET_BLOCKS=N
// N key blocks per dense launch in deterministic mode (tests). MSA_INDEX_LOSS=reference makes
// index_loss_cuda_supported false (the CPU reference runs on host copies).
// Fewer queries than keys (context parallelism): Tq query rows (q, lse, iq, diq, the selection) at
// positions off + t, off = Tk - Tq, against Tk keys (k, ik, dik): queries, their rows and work-list
// entries are local (t), every causal or block bound compares the position off + t with the key
// s, blocks are counted over the keys. Any offset works (no multiple of B needed); off = 0 is the
// Tq == Tk path unchanged.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "core/deterministic.h"
#include "core/env_switch.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/kernel_dispatch.h"
#include "kernels/cuda/kv_outer_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/msa_cuda.h"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace msa::cuda {
namespace {

using kv_outer::find_work_item;
using kv_outer::KvDims;
using kv_outer::WorkItem;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- pass A, sparse: student lse partials ---------------------------------------------------

constexpr int kWarpsA = 4;
constexpr int kTokensA = kWarpsA * 16;  // tokens per CTA tile
constexpr int kMinTilesA = 8;           // tiles per ik_j load (at least)

template <int DI, int BK>
struct SmemA {
  static constexpr int kLd = DI + 8;  // 16-byte row padding: conflict-free ldmatrix
  static constexpr size_t kBytes =
      (size_t(BK) * kLd + size_t(kWarpsA) * 2 * 16 * kLd) * sizeof(bf16);
};

// grid.x >= the work items; part[(chunk_row(b, t) G + g) K + slot] = (max of S log2e, sum of
// 2^(S log2e - max)) over the row's tokens s <= off + t of block j (s_log2 = log2e / sqrt(dI));
// iq and ik are offset to the launch's first sequence, ik has Tk rows per sequence.
template <int DI, int BK>
__global__ void __launch_bounds__(kWarpsA * 32)
    student_lse_sparse_kernel(const bf16* __restrict__ iq, const bf16* __restrict__ ik,
                              const int32_t* __restrict__ list_start,
                              const int32_t* __restrict__ item_start,
                              const int32_t* __restrict__ item_list, int64_t lists,
                              const int32_t* __restrict__ entries, float s_log2,
                              float2* __restrict__ part, KvDims a, int64_t Tk, int64_t off) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kLd = SmemA<DI, BK>::kLd, kChunks = DI / 8;
  bf16* iks = reinterpret_cast<bf16*>(smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  bf16* qs = iks + BK * kLd + warp * 2 * 16 * kLd;
  WorkItem w;
  if (!find_work_item(static_cast<int32_t>(blockIdx.x), item_start, item_list, list_start, lists, a,
                      kTokensA, kMinTilesA, w))
    return;
  const int64_t j = w.j, g = w.g;
  iq += w.b * a.S * a.G * DI;
  ik += w.b * Tk * DI;
  for (int c = threadIdx.x; c < BK * kChunks; c += blockDim.x) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    const int64_t s = j * BK + row;
    cp_async_16(iks + row * kLd + col, ik + (s < Tk ? s : 0) * DI + col, s < Tk);
  }
  cp_async_commit();
  auto load = [&](int tile, int buf) {
    const int e0 = w.begin + tile * kTokensA + warp * 16;
    for (int i = lane; i < 16 * kChunks; i += 32) {
      const int R = i / kChunks, col = (i % kChunks) * 8;
      const int e = e0 + R;
      const bool valid = e < w.end;
      const int64_t t = valid ? (entries[e] >> 5) : 0;
      cp_async_16(qs + (buf * 16 + R) * kLd + col, iq + (t * a.G + g) * DI + col, valid);
    }
    cp_async_commit();
  };
  load(w.tile_begin, 0);
  for (int tile = w.tile_begin; tile < w.tile_end; ++tile) {
    const int buf = (tile - w.tile_begin) & 1;
    if (tile + 1 < w.tile_end) {
      __syncwarp();  // every lane is done reading buf ^ 1
      load(tile + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if (tile == w.tile_begin)
      __syncthreads();  // ik_j from every thread
    else
      __syncwarp();
    const bf16* qt = qs + buf * 16 * kLd;
    const int e0 = w.begin + tile * kTokensA + warp * 16;
    int64_t t_row[2];
    int slot_row[2], lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int e = e0 + grp + 8 * h;
      const bool valid = e < w.end;
      const int32_t entry = valid ? entries[e] : 0;
      t_row[h] = entry >> 5;
      slot_row[h] = entry & 31;
      lim[h] = valid ? static_cast<int>(t_row[h] + off - j * BK) : -1;  // last key of the block
    }
    float sc[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
    for (int kstep = 0; kstep < DI / 16; ++kstep) {
      uint32_t qa[4];
      ldmatrix_x4(qa,
                  qt + ((lane % 8) + 8 * ((lane / 8) % 2)) * kLd + kstep * 16 + 8 * (lane / 16));
#pragma unroll
      for (int nt = 0; nt < BK / 8; nt += 2) {
        uint32_t b4[4];
        ldmatrix_x4(
            b4, iks + ((nt + lane / 16) * 8 + lane % 8) * kLd + kstep * 16 + ((lane / 8) % 2) * 8);
        mma_bf16(sc[nt], qa, b4[0], b4[1]);
        mma_bf16(sc[nt + 1], qa, b4[2], b4[3]);
      }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int key = nt * 8 + 2 * tig + (c & 1);
        const float x = key <= lim[c / 2] ? sc[nt][c] * s_log2 : -INFINITY;
        sc[nt][c] = x;
        mx[c / 2] = fmaxf(mx[c / 2], x);
      }
    float l[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      if (mx[h] == -INFINITY) mx[h] = 0.0f;  // padding row: keeps NaNs out
      l[h] = 0.0f;
    }
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) l[c / 2] += fast_exp2(sc[nt][c] - mx[c / 2]);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
      if (tig == 0 && lim[h] >= 0)
        part[(a.chunk_row(w.b, t_row[h]) * a.G + g) * a.K + slot_row[h]] =
            make_float2(mx[h], l[h]);
    }
  }
}

// Row i = chunk_row(b, t) G + g of a launch (its partials' order) as a row (b S + t) G + g of
// the launch's sequences (counts, lseq, diq, row_kl).
__device__ __forceinline__ int64_t sequence_row(int64_t i, const KvDims& a) {
  const int64_t cq = i / a.G, rows = a.t1 - a.t0;
  return ((cq / rows) * a.S + a.t0 + cq % rows) * a.G + i % a.G;
}

// One thread per row (t, g) of the launch: lseq[row] = logsumexp over the row's slots.
__global__ void lse_combine_kernel(const float2* __restrict__ part,
                                   const int32_t* __restrict__ counts, float* __restrict__ lseq,
                                   KvDims a) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= a.chunk_queries() * a.G) return;
  const int64_t row = sequence_row(i, a);
  const int count = counts[row];
  const float2* p = part + i * a.K;
  float m = -INFINITY;
  for (int s = 0; s < count; ++s) m = fmaxf(m, p[s].x);
  float l = 0.0f;
  for (int s = 0; s < count; ++s) l += p[s].y * exp2f(p[s].x - m);
  lseq[row] = (m + log2f(l)) * kLn2;
}

// ---- pass A, dense: query-outer online lse ---------------------------------------------------

constexpr int kRowsD = 64;  // (t, g) rows per CTA (4 warps x 16)
constexpr int kKeysD = 64;  // keys per tile

template <int DI>
struct SmemD {
  static constexpr int kLd = DI + 8;
  static constexpr size_t kBytes = size_t(kRowsD + 2 * kKeysD) * kLd * sizeof(bf16);
};

// Rows (t, g) of one sequence flattened (row = t G + g, iq's own order, Tq tokens); heavy CTAs
// (late rows) first. lseq[row] = logsumexp over s <= off + t of S (ik: Tk rows). blockIdx.y: the
// sequence of the launch (iq, ik and lseq offset to it).
template <int DI>
__global__ void __launch_bounds__(128)
    student_lse_dense_kernel(const bf16* __restrict__ iq, const bf16* __restrict__ ik,
                             float* __restrict__ lseq, int64_t Tq, int64_t Tk, int64_t off,
                             int64_t G, float s_log2) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kLd = SmemD<DI>::kLd, kChunks = DI / 8;
  bf16* iqs = reinterpret_cast<bf16*>(smem_raw);
  bf16* ikt = iqs + kRowsD * kLd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  const int64_t rows = Tq * G;
  iq += blockIdx.y * rows * DI;
  ik += blockIdx.y * Tk * DI;
  lseq += blockIdx.y * rows;
  const int64_t r0 = (static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x) * kRowsD;
  for (int c = threadIdx.x; c < kRowsD * kChunks; c += blockDim.x) {
    const int R = c / kChunks, col = (c % kChunks) * 8;
    const bool valid = r0 + R < rows;
    cp_async_16(iqs + R * kLd + col, iq + (valid ? r0 + R : 0) * DI + col, valid);
  }
  const int64_t t_max = (min(r0 + kRowsD, rows) - 1) / G + off;  // the CTA's last position
  const int n_kt = static_cast<int>(t_max / kKeysD) + 1;
  auto issue = [&](int kt) {
    bf16* dst = ikt + (kt & 1) * kKeysD * kLd;
    for (int c = threadIdx.x; c < kKeysD * kChunks; c += blockDim.x) {
      const int R = c / kChunks, col = (c % kChunks) * 8;
      const int64_t s = static_cast<int64_t>(kt) * kKeysD + R;
      cp_async_16(dst + R * kLd + col, ik + (s < Tk ? s : 0) * DI + col, s < Tk);
    }
    cp_async_commit();
  };
  issue(0);  // with the iq rows
  const int64_t wr0 = r0 + warp * 16;
  // Positions (off + t): the warp's first and last, each accumulator row's (-1: padding).
  const int64_t w_tmin = wr0 / G + off;
  const int64_t w_tmax = wr0 < rows ? (min(wr0 + 16, rows) - 1) / G + off : -1;
  int64_t t_row[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = wr0 + grp + 8 * h;
    t_row[h] = row < rows ? row / G + off : -1;
  }
  uint32_t qa[DI / 16][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  for (int kt = 0; kt < n_kt; ++kt) {
    cp_async_wait<0>();
    __syncthreads();  // tile kt visible; every warp is done with tile kt - 1's buffer
    if (kt + 1 < n_kt) issue(kt + 1);
    if (kt == 0) {
#pragma unroll
      for (int ks = 0; ks < DI / 16; ++ks)
        ldmatrix_x4(qa[ks], iqs + (warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * kLd + ks * 16 +
                                8 * (lane / 16));
    }
    const int64_t s0 = static_cast<int64_t>(kt) * kKeysD;
    if (s0 > w_tmax) continue;  // warp-uniform: no row of this warp reaches the tile
    const bf16* kb = ikt + (kt & 1) * kKeysD * kLd;
    float sc[kKeysD / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeysD / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < DI / 16; ++ks)
#pragma unroll
      for (int nt = 0; nt < kKeysD / 8; nt += 2) {
        uint32_t b4[4];
        ldmatrix_x4(b4,
                    kb + ((nt + lane / 16) * 8 + lane % 8) * kLd + ks * 16 + ((lane / 8) % 2) * 8);
        mma_bf16(sc[nt], qa[ks], b4[0], b4[1]);
        mma_bf16(sc[nt + 1], qa[ks], b4[2], b4[3]);
      }
    const bool mask = s0 + kKeysD - 1 > w_tmin;
    float tmx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kKeysD / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t s = s0 + nt * 8 + 2 * tig + (c & 1);
        const float x = (!mask || s <= t_row[c / 2]) ? sc[nt][c] * s_log2 : -INFINITY;
        sc[nt][c] = x;
        tmx[c / 2] = fmaxf(tmx[c / 2], x);
      }
    float mn[2], alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tmx[h] = fmaxf(tmx[h], __shfl_xor_sync(0xffffffffu, tmx[h], 1));
      tmx[h] = fmaxf(tmx[h], __shfl_xor_sync(0xffffffffu, tmx[h], 2));
      mn[h] = fmaxf(m[h], tmx[h]);
      const float base = mn[h] == -INFINITY ? 0.0f : mn[h];  // nothing yet: keep NaNs out
      alpha[h] = fast_exp2(m[h] - base);                     // m = -inf: 0
      l[h] *= alpha[h];
      mn[h] = base;
    }
#pragma unroll
    for (int nt = 0; nt < kKeysD / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) l[c / 2] += fast_exp2(sc[nt][c] - mn[c / 2]);
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (m[h] != -INFINITY || tmx[h] != -INFINITY) m[h] = mn[h];
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    if (tig == 0 && t_row[h] >= 0) lseq[wr0 + grp + 8 * h] = (m[h] + log2f(l[h])) * kLn2;
  }
}

// ---- pass B: teacher, student, KL sums and gradients (KV-outer, keys as mma rows) -----------

constexpr int kTileB = 32;         // tokens per tile
constexpr int kMinTilesB = 8;      // sparse: tiles per K_j / ik_j load (at least)
constexpr int kDenseTokens = 256;  // dense: tokens per CTA
constexpr int kMaxThreadsB = 256;  // BK = 128: 8 warps
constexpr int kHeadsPerStage = 4;  // heads of q per pipeline stage (smem: 2 x 4 x M rows)

// Heads of q per pipeline stage: up to kHeadsPerStage at B = 128, where one CTA per SM runs
// either way; one at smaller blocks, where the larger stage buffer would cost the second CTA.
__host__ __device__ inline int heads_per_stage(int BK, int r) {
  return BK >= 128 ? (r < kHeadsPerStage ? r : kHeadsPerStage) : 1;
}

struct GradArgs {
  int64_t T, H, G, r, K;  // T: query tokens (Tq)
  int64_t Tk, off;            // key tokens; query t sits at position off + t (off = Tk - Tq)
  int BK;
  float scale_log2;  // teacher scale * log2e
  float s_scale;     // 1 / sqrt(dI)
  float factor;      // weight / (n_rows sqrt(dI)), applied to both gradients
  // Deterministic mode (core/deterministic.h, the kernel's kDet): instead of f32 atomics, every
  // contribution is stored to its own partial slot and fixed-order kernels add the slots.
  //   sparse: diq_part [chunk_row(b, t) G + g][slot][DI], dik_part [work item][BK][DI].
  //   dense, key blocks [j0, j0 + grid.x): diq_part [j - j0][t G + g][DI] (t < Tq),
  //     sums_part [j - j0][t G + g][3], dik_part [j - j0][g][c][BK][DI] (c = blockIdx.y).
  float* diq_part = nullptr;
  float* dik_part = nullptr;
  float* sums_part = nullptr;
  int64_t j0 = 0;  // dense: the first key block of this launch (blockIdx.x = j - j0)
};

// Shared-memory carve-up of loss_grad_kernel (byte offsets; every piece a multiple of 16 bytes).
// The q stages come first: with the wgmma teacher (`swizzled`) they are sw128 tiles, which start
// 1024-byte aligned, so the kernel aligns its base and `bytes` holds the 1024 bytes that may take.
struct GradSmem {
  size_t qst, ks, iks, iqt, dsh, dsl, lse, lseq, red, tok, slot, lim, bytes;
  __host__ __device__ static size_t take(size_t& o, size_t n) {
    const size_t at = o;
    o += (n + 15) / 16 * 16;
    return at;
  }
  __host__ __device__ GradSmem(int D, int DI, int BK, int r, bool swizzled) {
    const size_t M = kTileB, nW = BK / 16;
    size_t o = 0;
    qst = take(o, 2 * size_t(heads_per_stage(BK, r)) * M * (swizzled ? D : D + 8) * 2);
    ks = take(o, size_t(BK) * (D + 8) * 2);
    iks = take(o, size_t(BK) * (DI + 8) * 2);
    iqt = take(o, 2 * M * (DI + 8) * 2);
    dsh = take(o, size_t(BK) * (M + 8) * 2);  // dS^T hi / lo parts, [key][token]
    dsl = take(o, size_t(BK) * (M + 8) * 2);
    lse = take(o, 2 * size_t(r) * M * 4);
    lseq = take(o, 2 * M * 4);
    red = take(o, nW * M * 3 * 4);
    tok = take(o, 2 * M * 4);
    slot = take(o, 2 * M * 4);
    lim = take(o, 2 * M * 4);
    bytes = o + (swizzled ? 1024 : 0);
  }
};

// C fragments of two adjacent 8-column tiles as the A fragments of bf16 hi and lo parts
// (x = hi + lo to ~16 mantissa bits).
__device__ __forceinline__ void split_c_to_a(uint32_t (&hi)[4], uint32_t (&lo)[4],
                                             const float (&c0)[4], const float (&c1)[4]) {
  const float v[8] = {c0[0], c0[1], c0[2], c0[3], c1[0], c1[1], c1[2], c1[3]};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    hi[i] = pack_bf16(v[2 * i], v[2 * i + 1]);
    const float h0 = __uint_as_float(hi[i] << 16), h1 = __uint_as_float(hi[i] & 0xffff0000u);
    lo[i] = pack_bf16(v[2 * i] - h0, v[2 * i + 1] - h1);
  }
}

// One step of a warp reduce-scatter: lanes that differ in `kBit` add each other's x[0 .. 2 kHalf)
// halves, the lane with the bit set keeping the upper half (now in x[0 .. kHalf)).
template <int kHalf, int kBit>
__device__ __forceinline__ void reduce_scatter_step(float* x, int lane) {
  const bool upper = (lane & kBit) != 0;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float send = upper ? x[i] : x[i + kHalf];
    const float keep = upper ? x[i + kHalf] : x[i];
    x[i] = keep + __shfl_xor_sync(0xffffffffu, send, kBit);
  }
}

// Two adjacent floats (8-byte aligned) added atomically: one vector red on sm_90, two scalar
// ones before it.
__device__ __forceinline__ void atomic_add2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(x), "f"(y) : "memory");
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// Pointers are offset to the launch's first sequence; a CTA offsets them to its own (sparse: the
// work item's b; dense: blockIdx.z / G): q [Tq, H, D], k [Tk, G, D], lse [H, Tq], iq [Tq, G, DI],
// ik [Tk, DI], lseq [Tq, G], diq [Tq, G, DI], dik [Tk, DI] (a.T = Tq, a.Tk; token t at position
// a.off + t).
// Sparse (kDense false): grid.x >= the work items (tiles of kTileB, kMinTilesB), kl_out =
//   partials [chunk_row(b, t) G + g][slot][3]. Dense: grid (nb, ceil(Tq / kDenseTokens),
//   nseq G), CTA (j, c, b G + g) takes sequence b's tokens [max(jB - off, c kDenseTokens),
//   min(Tq, (c + 1) kDenseTokens)) (those at positions >= jB); kl_out = per-row sums
//   [b][t G + g][3] (zeroed by the caller, f32 atomics). Deterministic dense launches hold one
//   sequence (its slots have no sequence index).
// kl sums per token: [0] sum P log P, [1] sum P S, [2] sum P.
// kDet: deterministic mode (the slots of GradArgs), a separate instantiation so that the
// default kernel stays as it was.
// kWgmma (sm_90a; D 64 or 128, BK 64 or 128; index_loss_wgmma): the teacher's Z^T = K q_h^T
// on warpgroup MMAs (wgmma m64n32k16, A = the warp's 16 keys of K_j in registers for the whole work
// item, B = the head's q tile from shared memory, stored as 128-byte-swizzled tiles), two heads in
// flight: head h + 1's MMAs run while head h's exponentials do. The mma.sync teacher re-reads its K
// fragments and the q tile through ldmatrix for every head and warp (24 of its 128 instructions per
// head); everything after the teacher is the same code.
template <int D, int DI, bool kDense, bool kDet, bool kWgmma>
__global__ void __launch_bounds__(kMaxThreadsB)
    loss_grad_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                     const float* __restrict__ lse, const bf16* __restrict__ iq,
                     const bf16* __restrict__ ik, const float* __restrict__ lseq,
                     const int32_t* __restrict__ list_start, const int32_t* __restrict__ item_start,
                     const int32_t* __restrict__ item_list, int64_t lists,
                     const int32_t* __restrict__ entries, KvDims kd, float* __restrict__ kl_out,
                     float* __restrict__ diq, float* __restrict__ dik, GradArgs a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int M = kTileB, kLd = D + 8, kLdI = DI + 8;
  constexpr int kLdT = M + 8;  // dS^T rows: 80 bytes, conflict-free for ldmatrix and the stores
  constexpr size_t kQHeadBytes = size_t(M) * D * 2;  // wgmma: one head's swizzled q tile
  const int BK = a.BK, nW = BK / 16, nthreads = nW * 32;
  const int r = static_cast<int>(a.r);
  const GradSmem L(D, DI, BK, r, kWgmma);
  unsigned char* smem = smem_raw;
  if constexpr (kWgmma) smem = sw128_align(smem_raw);
  bf16* ks = reinterpret_cast<bf16*>(smem + L.ks);
  bf16* iks = reinterpret_cast<bf16*>(smem + L.iks);
  unsigned char* qst = smem + L.qst;
  bf16* iqt = reinterpret_cast<bf16*>(smem + L.iqt);
  bf16* dsh = reinterpret_cast<bf16*>(smem + L.dsh);
  bf16* dsl = reinterpret_cast<bf16*>(smem + L.dsl);
  float* lse_s = reinterpret_cast<float*>(smem + L.lse);
  float* lseq_s = reinterpret_cast<float*>(smem + L.lseq);
  float* red = reinterpret_cast<float*>(smem + L.red);
  int* tok_s = reinterpret_cast<int*>(smem + L.tok);
  int* slot_s = reinterpret_cast<int*>(smem + L.slot);
  int* lim_s = reinterpret_cast<int*>(smem + L.lim);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int grp = lane >> 2, tig = lane & 3, l16 = lane % 16;

  int64_t j, g, b = 0, tok0 = 0;
  int32_t begin, end;
  int tile_begin, tile_end;
  if constexpr (kDense) {
    j = a.j0 + blockIdx.x;
    g = blockIdx.z % a.G;
    b = blockIdx.z / a.G;
    const int64_t lo = max(j * BK - a.off, static_cast<int64_t>(blockIdx.y) * kDenseTokens);
    const int64_t hi = min(a.T, static_cast<int64_t>(blockIdx.y + 1) * kDenseTokens);
    if (lo >= hi) return;  // every token of this range precedes block j
    tok0 = lo;
    begin = 0;
    end = static_cast<int32_t>(hi - lo);
    tile_begin = 0;
    tile_end = (end + M - 1) / M;
  } else {
    WorkItem w;
    if (!find_work_item(static_cast<int32_t>(blockIdx.x), item_start, item_list, list_start, lists,
                        kd, M, kMinTilesB, w))
      return;
    j = w.j;
    g = w.g;
    b = w.b;
    begin = w.begin;
    end = w.end;
    tile_begin = w.tile_begin;
    tile_end = w.tile_end;
  }
  // Sequence b of the launch.
  q += b * a.T * a.H * D;
  k += b * a.Tk * a.G * D;
  lse += b * a.H * a.T;
  iq += b * a.T * a.G * DI;
  ik += b * a.Tk * DI;
  lseq += b * a.T * a.G;
  diq += b * a.T * a.G * DI;
  dik += b * a.Tk * DI;
  if constexpr (kDense) kl_out += b * a.T * a.G * 3;  // per-row sums; sparse: launch partials
  // Token and slot of list entry e (valid entries only).
  auto token_of = [&](int32_t e, int& slot) -> int64_t {
    if constexpr (kDense) {
      slot = 0;
      return tok0 + e;
    } else {
      const int32_t entry = entries[e];
      slot = entry & 31;
      return entry >> 5;
    }
  };

  // K_j and ik_j (zeros past the last key), committed with stage 0.
  for (int c = tid; c < BK * (D / 8); c += nthreads) {
    const int row = c / (D / 8), col = (c % (D / 8)) * 8;
    const int64_t s = j * BK + row;
    cp_async_16(ks + row * kLd + col, k + ((s < a.Tk ? s : 0) * a.G + g) * D + col, s < a.Tk);
  }
  for (int c = tid; c < BK * (DI / 8); c += nthreads) {
    const int row = c / (DI / 8), col = (c % (DI / 8)) * 8;
    const int64_t s = j * BK + row;
    cp_async_16(iks + row * kLdI + col, ik + (s < a.Tk ? s : 0) * DI + col, s < a.Tk);
  }

  // Stage (tile tr, head chunk hc): the q rows of heads hc hs .. hc hs + hs - 1 (hs =
  // heads_per_stage) for the tile's tokens into qst[stage & 1]; at hc = 0 also the tile's token
  // data into buffer tr & 1: token, slot, last key of block j (position off + t - jB; -1:
  // padding), lseQ, lse of every head, the iq rows. Several heads per stage: one barrier per
  // tile at r <= 4 and B = 128 instead of one per head (docs/perf.md).
  const int hs = heads_per_stage(BK, r);
  const int n_chunks = (r + hs - 1) / hs, n_tiles = tile_end - tile_begin;
  const int n_stages = n_tiles * n_chunks;
  // This thread's q pieces: rows qi0, qi0 + q_step, ... of a head's M x D tile, column qcol.
  constexpr int kPieces = D / 8;
  const int qi0 = tid / kPieces, q_step = nthreads / kPieces, qcol = (tid % kPieces) * 8;
  auto issue = [&](int tr, int hc, int qb) {
    const int tb = tr & 1;
    const int32_t e0 = begin + (tile_begin + tr) * M;
    if (hc == 0) {
      if (tid < M) {
        const int i = tid;
        const int32_t e = e0 + i;
        const bool valid = e < end;
        int slot = 0;
        const int64_t t = valid ? token_of(e, slot) : 0;
        tok_s[tb * M + i] = static_cast<int>(t);
        slot_s[tb * M + i] = slot;
        // int arithmetic (Tk <= 65535 blocks x 128): keeps the sparse kernels' registers as
        // they were without the offset.
        lim_s[tb * M + i] = valid ? static_cast<int>(t - j * BK) + static_cast<int>(a.off) : -1;
        cp_async_4(lseq_s + tb * M + i, lseq + t * a.G + g, valid);
      }
      for (int c = tid; c < M * r; c += nthreads) {
        const int i = c % M, hh = c / M;
        const int32_t e = e0 + i;
        const bool valid = e < end;
        int slot;
        const int64_t t = valid ? token_of(e, slot) : 0;
        cp_async_4(lse_s + (tb * r + hh) * M + i, lse + (g * a.r + hh) * a.T + t, valid);
      }
      for (int c = tid; c < M * (DI / 8); c += nthreads) {
        const int i = c / (DI / 8), col = (c % (DI / 8)) * 8;
        const int32_t e = e0 + i;
        const bool valid = e < end;
        int slot;
        const int64_t t = valid ? token_of(e, slot) : 0;
        cp_async_16(iqt + (tb * M + i) * kLdI + col, iq + (t * a.G + g) * DI + col, valid);
      }
    }
    const int h0 = hc * hs, nh = r - h0 < hs ? r - h0 : hs;
    for (int i = qi0; i < M; i += q_step) {
      const int32_t e = e0 + i;
      const bool valid = e < end;
      int slot;
      const int64_t t = valid ? token_of(e, slot) : 0;
      const bf16* src = q + (t * a.H + g * a.r + h0) * D + qcol;
      if constexpr (kWgmma) {
        unsigned char* dst = qst + qb * hs * kQHeadBytes + sw128_offset(M, i, qcol);
        for (int hh = 0; hh < nh; ++hh) cp_async_16(dst + hh * kQHeadBytes, src + hh * D, valid);
      } else {
        bf16* dst = reinterpret_cast<bf16*>(qst) + ((qb * hs) * M + i) * kLd + qcol;
        for (int hh = 0; hh < nh; ++hh) cp_async_16(dst + hh * M * kLd, src + hh * D, valid);
      }
    }
    cp_async_commit();
  };

  float P[M / 8][4];    // teacher, summed over heads: key rows x token columns
  float dk[DI / 8][4];  // this warp's 16 keys of dik, over the whole work item
#pragma unroll
  for (int nt = 0; nt < DI / 8; ++nt) dk[nt][0] = dk[nt][1] = dk[nt][2] = dk[nt][3] = 0.0f;
  const int arow = warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2), acol = 8 * (lane / 16);
  const int brow = (lane / 16) * 8 + lane % 8, bcol = ((lane / 8) % 2) * 8;
  const float inv_r = 1.0f / static_cast<float>(r);
  const float s_log2 = a.s_scale * kLog2e;  // student scores in log2 units

  // wgmma: this warp's 16 keys of K_j as A fragments, loaded once (after the first barrier).
  uint32_t kfrag[kWgmma ? D / 16 : 1][4];
  if (n_stages > 0) issue(0, 0, 0);
  int tr = 0, hc = 0;
  for (int sg = 0; sg < n_stages; ++sg) {
    cp_async_wait<0>();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if constexpr (kWgmma) fence_proxy_async();  // the q tiles, written by cp.async, for wgmma
#endif
    __syncthreads();  // stage sg visible to all; every warp is done with stage sg - 1
    if constexpr (kWgmma) {
      if (sg == 0) {
#pragma unroll
        for (int kstep = 0; kstep < D / 16; ++kstep)
          ldmatrix_x4(kfrag[kstep], ks + arow * kLd + kstep * 16 + acol);
      }
    }
    const int ntr = hc + 1 < n_chunks ? tr : tr + 1, nhc = hc + 1 < n_chunks ? hc + 1 : 0;
    if (sg + 1 < n_stages) issue(ntr, nhc, (sg + 1) & 1);
    const int tb = tr & 1, qb = sg & 1;
    if (hc == 0) {
#pragma unroll
      for (int nq = 0; nq < M / 8; ++nq) P[nq][0] = P[nq][1] = P[nq][2] = P[nq][3] = 0.0f;
    }
    const int h0 = hc * hs, nh = r - h0 < hs ? r - h0 : hs;
    const bool last_chunk = hc + 1 == n_chunks;
    tr = ntr;
    hc = nhc;
    if constexpr (kWgmma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
      // Teacher scores of head h0 + hh: Z^T = K q_h^T, this warpgroup's 64 keys x M tokens, the
      // accumulators in the mma.sync C layout (warp rows 16 w .. 16 w + 15: the same keys as
      // below). Head hh + 1's MMAs are issued before head hh's exponentials.
      static_assert(M == 32, "the wgmma teacher is written for 32-token tiles (m64n32k16)");
      const unsigned char* q_stage = qst + qb * hs * kQHeadBytes;
      auto issue_head = [&](int hh, float(&d)[16]) {
        const unsigned char* tile = q_stage + hh * kQHeadBytes;
        wgmma_fence();
#pragma unroll
        for (int kstep = 0; kstep < D / 16; ++kstep)
          wgmma_m64n32k16_rs<0>(d, kfrag[kstep],
                                sw128_desc(tile + (kstep / 4) * M * 128 + (kstep % 4) * 32),
                                kstep > 0);
        wgmma_commit();
      };
      // The stage's heads as a compile-time count: no MMA is in flight across a branch or a
      // loop edge (ptxas serializes wgmma there, warning C7518).
      auto teacher = [&](auto heads) {
        constexpr int kNh = decltype(heads)::value;
        float acc[2][16];
        issue_head(0, acc[0]);
#pragma unroll
        for (int hh = 0; hh < kNh; ++hh) {
          if (hh + 1 < kNh) {
            issue_head(hh + 1, acc[(hh + 1) & 1]);
            wgmma_wait<1>();
          } else {
            wgmma_wait<0>();
          }
          fence_operands(acc[hh & 1]);
          const float* lse_h = lse_s + (tb * r + h0 + hh) * M;
#pragma unroll
          for (int i = 0; i < 16; ++i) {
            const int nq = i / 4, c = i % 4, col = nq * 8 + 2 * tig + (c & 1);
            P[nq][c] += fast_exp2(fmaf(acc[hh & 1][i], a.scale_log2, -lse_h[col] * kLog2e));
          }
        }
      };
      static_assert(kHeadsPerStage == 4, "the dispatch below covers 1 .. 4 heads per stage");
      switch (nh) {
        case 1:
          teacher(std::integral_constant<int, 1>{});
          break;
        case 2:
          teacher(std::integral_constant<int, 2>{});
          break;
        case 3:
          teacher(std::integral_constant<int, 3>{});
          break;
        default:
          teacher(std::integral_constant<int, 4>{});
      }
#else
      __trap();  // never chosen without sm_90a code (index_loss_wgmma)
#endif
    } else {
      for (int hh = 0; hh < nh; ++hh) {
        // Teacher scores of head h0 + hh: Z^T = K_w q_h^T (16 keys x M tokens).
        float sc[M / 8][4];
#pragma unroll
      for (int nq = 0; nq < M / 8; ++nq) sc[nq][0] = sc[nq][1] = sc[nq][2] = sc[nq][3] = 0.0f;
      const bf16* qb_s = reinterpret_cast<const bf16*>(qst) + (qb * hs + hh) * M * kLd;
#pragma unroll
      for (int kstep = 0; kstep < D / 16; ++kstep) {
        uint32_t ka[4];
        ldmatrix_x4(ka, ks + arow * kLd + kstep * 16 + acol);
#pragma unroll
        for (int nq = 0; nq < M / 8; nq += 2) {
          uint32_t b4[4];
          ldmatrix_x4(b4, qb_s + (nq * 8 + brow) * kLd + kstep * 16 + bcol);
          mma_bf16(sc[nq], ka, b4[0], b4[1]);
          mma_bf16(sc[nq + 1], ka, b4[2], b4[3]);
        }
      }
      const float* lse_h = lse_s + (tb * r + h0 + hh) * M;
#pragma unroll
      for (int nq = 0; nq < M / 8; ++nq)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int col = nq * 8 + 2 * tig + (c & 1);
          P[nq][c] += fast_exp2(fmaf(sc[nq][c], a.scale_log2, -lse_h[col] * kLog2e));
        }
    }
    }
    if (!last_chunk) continue;
    float sc[M / 8][4];

    // ---- end of tile tr: student, Q, dS, KL sums, gradients ----
    const bf16* iqb = iqt + tb * M * kLdI;
    const int* lim_t = lim_s + tb * M;
    const float* lq = lseq_s + tb * M;
#pragma unroll
    for (int nq = 0; nq < M / 8; ++nq) sc[nq][0] = sc[nq][1] = sc[nq][2] = sc[nq][3] = 0.0f;
#pragma unroll
    for (int kstep = 0; kstep < DI / 16; ++kstep) {
      uint32_t ka[4];
      ldmatrix_x4(ka, iks + arow * kLdI + kstep * 16 + acol);
#pragma unroll
      for (int nq = 0; nq < M / 8; nq += 2) {
        uint32_t b4[4];
        ldmatrix_x4(b4, iqb + (nq * 8 + brow) * kLdI + kstep * 16 + bcol);
        mma_bf16(sc[nq], ka, b4[0], b4[1]);
        mma_bf16(sc[nq + 1], ka, b4[2], b4[3]);
      }
    }
    float sums[M / 8][2][3];
#pragma unroll
    for (int nq = 0; nq < M / 8; ++nq)
#pragma unroll
      for (int e = 0; e < 2; ++e) sums[nq][e][0] = sums[nq][e][1] = sums[nq][e][2] = 0.0f;
#pragma unroll
    for (int nq = 0; nq < M / 8; ++nq)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = nq * 8 + 2 * tig + (c & 1);
        const int key = warp * 16 + grp + 8 * (c / 2);
        const bool valid = key <= lim_t[col];
        const float p = valid ? P[nq][c] * inv_r : 0.0f;
        // log2 units and raw scores here; the per-token sums take ln 2 and 1 / sqrt(dI) below.
        const float qv = valid ? fast_exp2(fmaf(sc[nq][c], s_log2, -lq[col] * kLog2e)) : 0.0f;
        sums[nq][c & 1][0] += p > 0.0f ? p * __log2f(p) : 0.0f;
        sums[nq][c & 1][1] += p * sc[nq][c];
        sums[nq][c & 1][2] += p;
        sc[nq][c] = qv - p;  // dS
      }
    // Per token: sum over this warp's 16 keys (rows grp, grp + 8 of the 8 lanes sharing tig).
    // A reduce-scatter over lane bits 4, 3, 2 (each step sends half of what is left, 21
    // shuffles instead of 72) leaves lane grp with the 3 sums of value 3 grp .. 3 grp + 2 of the
    // 24 (nq, e, v), i.e. token nq * 8 + 2 tig + e with nq = grp / 2, e = grp % 2.
    {
      static_assert(M / 8 * 2 * 3 == 24, "the reduce-scatter below is written for 32-token tiles");
      float x[24];
#pragma unroll
      for (int nq = 0; nq < M / 8; ++nq)
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
          for (int v = 0; v < 3; ++v) x[nq * 6 + e * 3 + v] = sums[nq][e][v];
      reduce_scatter_step<12, 16>(x, lane);
      reduce_scatter_step<6, 8>(x, lane);
      reduce_scatter_step<3, 4>(x, lane);
      float* dst = red + (warp * M + (grp >> 1) * 8 + 2 * tig + (grp & 1)) * 3;
      dst[0] = x[0] * kLn2;
      dst[1] = x[1] * a.s_scale;
      dst[2] = x[2];
    }
    // dik_w += dS^T iq: dS^T (keys x tokens) as A fragments, tokens the k dimension. The same
    // hi / lo fragments go to shared memory as dS^T [key][token] (a register holds two adjacent
    // tokens of one key: one 32-bit store) for the diq product below.
#pragma unroll
    for (int kk = 0; kk < M / 16; ++kk) {
      uint32_t ah[4], al[4];
      split_c_to_a(ah, al, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int off = (warp * 16 + grp + 8 * (i & 1)) * kLdT + kk * 16 + 2 * tig + 8 * (i >> 1);
        *reinterpret_cast<uint32_t*>(dsh + off) = ah[i];
        *reinterpret_cast<uint32_t*>(dsl + off) = al[i];
      }
#pragma unroll
      for (int nt = 0; nt < DI / 8; nt += 2) {
        uint32_t b4[4];
        ldmatrix_x4_trans(b4, iqb + (kk * 16 + l16) * kLdI + (nt + lane / 16) * 8);
        mma_bf16(dk[nt], ah, b4[0], b4[1]);
        mma_bf16(dk[nt + 1], ah, b4[2], b4[3]);
        mma_bf16(dk[nt], al, b4[0], b4[1]);
        mma_bf16(dk[nt + 1], al, b4[2], b4[3]);
      }
    }
    __syncthreads();  // dS and the per-warp sums complete
    // diq of the tile = dS ik_j: pieces of 16 tokens x 16 dims over the warps.
    const int* tok_t = tok_s + tb * M;
    for (int u = warp; u < (M / 16) * (DI / 16); u += nW) {
      const int mt = u / (DI / 16), np = u % (DI / 16);
      float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
      for (int kk = 0; kk < nW; ++kk) {
        uint32_t ah[4], al[4], b4[4];
        // dS (tokens x keys) A fragments from dS^T: transposed 8 x 8 loads, matrix lane / 8 =
        // (tokens + 8 ((lane / 8) % 2), keys + 8 (lane / 16)).
        const int off =
            (kk * 16 + (lane % 8) + 8 * (lane / 16)) * kLdT + mt * 16 + 8 * ((lane / 8) % 2);
        ldmatrix_x4_trans(ah, dsh + off);
        ldmatrix_x4_trans(al, dsl + off);
        ldmatrix_x4_trans(b4, iks + (kk * 16 + l16) * kLdI + (2 * np + lane / 16) * 8);
        mma_bf16(acc[0], ah, b4[0], b4[1]);
        mma_bf16(acc[1], ah, b4[2], b4[3]);
        mma_bf16(acc[0], al, b4[0], b4[1]);
        mma_bf16(acc[1], al, b4[2], b4[3]);
      }
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = mt * 16 + grp + 8 * hf;
        if (lim_t[i] < 0) continue;
        const int64_t row = static_cast<int64_t>(tok_t[i]) * a.G + g;
        if constexpr (kDet) {  // deterministic: this (row, slot or block)'s own slot
          const int64_t prow = kDense ? (j - a.j0) * a.T * a.G + row
                                      : ((kd.chunk_row(b, tok_t[i]) * a.G + g) * a.K +
                                         slot_s[tb * M + i]);
          float* dst = a.diq_part + prow * DI + np * 16 + 2 * tig;
#pragma unroll
          for (int n2 = 0; n2 < 2; ++n2)
            *reinterpret_cast<float2*>(dst + n2 * 8) =
                make_float2(acc[n2][2 * hf] * a.factor, acc[n2][2 * hf + 1] * a.factor);
        } else {
          float* dst = diq + row * DI + np * 16 + 2 * tig;
#pragma unroll
          for (int n2 = 0; n2 < 2; ++n2)
            atomic_add2(dst + n2 * 8, acc[n2][2 * hf] * a.factor, acc[n2][2 * hf + 1] * a.factor);
        }
      }
    }
    // The tile's KL sums, per token over the warps in order.
    if (tid < M && lim_t[tid] >= 0) {
      float v[3] = {0.0f, 0.0f, 0.0f};
      for (int w = 0; w < nW; ++w)
#pragma unroll
        for (int x = 0; x < 3; ++x) v[x] += red[(w * M + tid) * 3 + x];
      const int64_t t = tok_t[tid];
      if constexpr (kDense) {
        if constexpr (kDet) {  // deterministic: block j's own slot of the row
          float* o = a.sums_part + ((j - a.j0) * a.T * a.G + t * a.G + g) * 3;
#pragma unroll
          for (int x = 0; x < 3; ++x) o[x] = v[x];
        } else {
          float* o = kl_out + (t * a.G + g) * 3;
#pragma unroll
          for (int x = 0; x < 3; ++x) atomicAdd(o + x, v[x]);
        }
      } else {
        float* o = kl_out + ((kd.chunk_row(b, t) * a.G + g) * a.K + slot_s[tb * M + tid]) * 3;
#pragma unroll
        for (int x = 0; x < 3; ++x) o[x] = v[x];
      }
    }
  }
  // This warp's keys of dik (deterministic: this CTA's own [BK][DI] slot, all keys written).
  if constexpr (kDet) {
    const int64_t slot = kDense ? (((j - a.j0) * a.G + g) * gridDim.y + blockIdx.y)
                                : static_cast<int64_t>(blockIdx.x);
#pragma unroll
    for (int nt = 0; nt < DI / 8; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int key = warp * 16 + grp + 8 * hf;
        *reinterpret_cast<float2*>(a.dik_part + (slot * BK + key) * DI + nt * 8 + 2 * tig) =
            make_float2(dk[nt][2 * hf] * a.factor, dk[nt][2 * hf + 1] * a.factor);
      }
  } else {
#pragma unroll
    for (int nt = 0; nt < DI / 8; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int64_t s = j * BK + warp * 16 + grp + 8 * hf;
        if (s < a.Tk)
          atomic_add2(dik + s * DI + nt * 8 + 2 * tig, dk[nt][2 * hf] * a.factor,
                      dk[nt][2 * hf + 1] * a.factor);
      }
  }
}

// Row KL from the sums: sparse, the row's slot partials [chunk_row(b, t) G + g][slot][3]; dense,
// the per-row sums [t G + g][3]. row_kl, lseq and counts are offset to the launch's first
// sequence.
template <bool kDense>
__global__ void kl_combine_kernel(const float* __restrict__ sums,
                                  const int32_t* __restrict__ counts,
                                  const float* __restrict__ lseq, float* __restrict__ row_kl,
                                  KvDims a) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= a.chunk_queries() * a.G) return;
  const int64_t row = sequence_row(i, a);
  double A = 0, C = 0, Pt = 0;
  if constexpr (kDense) {
    A = sums[row * 3];
    C = sums[row * 3 + 1];
    Pt = sums[row * 3 + 2];
  } else {
    const int count = counts[row];
    for (int s = 0; s < count; ++s) {
      const float* p = sums + (i * a.K + s) * 3;
      A += p[0];
      C += p[1];
      Pt += p[2];
    }
  }
  // KL(P' || Q), P' = P / Pt: sum P' log P' - sum P' S + lseQ.
  // Pt = 0 (no mass): 0. A NaN teacher (NaN key or query) gives a NaN row, not a finite 0.
  row_kl[row] = !(Pt <= 0)
                    ? static_cast<float>((A - C) / Pt - log(Pt) + static_cast<double>(lseq[row]))
                    : 0.0f;
}

// ---- deterministic mode: fixed-order sums of the partial slots (GradArgs) ----------------------

// Sparse: diq[row] += the row's slots in slot order (the launch's rows; counts and diq offset to
// its first sequence).
__global__ void diq_slots_kernel(const float* __restrict__ part, const int32_t* __restrict__ counts,
                                 float* __restrict__ diq, KvDims a, int64_t DI) {
  const int64_t n = a.chunk_queries() * a.G * DI;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / DI, dim = i % DI, grow = sequence_row(row, a);
    const int count = counts[grow];
    float acc = diq[grow * DI + dim];
    for (int s = 0; s < count; ++s) acc += part[(row * a.K + s) * DI + dim];
    diq[grow * DI + dim] = acc;
  }
}

// Sparse: dik[b, s] (s < Tk, every key of the launch's nseq sequences) += the slots of the work
// items of s's block, groups in order, each list's items in order (item_start: pass B's items of
// this launch; dik offset to its first sequence).
__global__ void dik_items_kernel(const float* __restrict__ part,
                                 const int32_t* __restrict__ item_start, float* __restrict__ dik,
                                 int64_t nseq, int64_t Tk, int64_t G, int64_t nb, int BK,
                                 int64_t DI) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < nseq * Tk * DI; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / (Tk * DI), s = (i / DI) % Tk, dim = i % DI, j = s / BK, key = s % BK;
    float acc = dik[i];
    for (int64_t g = 0; g < G; ++g) {
      const int64_t list = (b * G + g) * nb + j;
      for (int32_t it = item_start[list]; it < item_start[list + 1]; ++it)
        acc += part[(static_cast<int64_t>(it) * BK + key) * DI + dim];
    }
    dik[i] = acc;
  }
}

// Dense, key blocks [j0, j1): diq[row] and row_sums[row] += blocks j0 .. min(j1, p / BK + 1) - 1
// in order, p = off + t the row's position (block j reaches the positions p >= jB only).
__global__ void dense_rows_kernel(const float* __restrict__ diq_part,
                                  const float* __restrict__ sums_part, float* __restrict__ diq,
                                  float* __restrict__ row_sums, int64_t Tq, int64_t off, int64_t G,
                                  int64_t DI, int BK, int64_t j0, int64_t j1) {
  // Rows at positions < j0 B get nothing from these blocks: start at the token at position j0 B.
  const int64_t rows = Tq * G, r0 = min(rows, max(int64_t(0), j0 * BK - off) * G),
                n = (rows - r0) * (DI + 3);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool is_diq = i < (rows - r0) * DI;
    const int64_t width = is_diq ? DI : 3, k = is_diq ? i : i - (rows - r0) * DI;
    const int64_t row = r0 + k / width, col = k % width, t = row / G;
    const float* part = is_diq ? diq_part : sums_part;
    float* out = is_diq ? diq : row_sums;
    const int64_t jend = min(j1, (t + off) / BK + 1);
    float acc = out[row * width + col];
    for (int64_t j = j0; j < jend; ++j) acc += part[((j - j0) * rows + row) * width + col];
    out[row * width + col] = acc;
  }
}

// Dense, key blocks [j0, j1): dik[s] (s < Tk) += the slots of the CTAs (j, c, g) of s's block,
// groups then token ranges c in order; CTAs with c < max(0, jB - off) / kDenseTokens had no tokens
// (all at positions < jB) and wrote nothing.
__global__ void dense_dik_kernel(const float* __restrict__ part, float* __restrict__ dik,
                                 int64_t Tk, int64_t off, int64_t G, int64_t DI, int BK, int64_t j0,
                                 int64_t j1, int64_t nc) {
  const int64_t s0 = j0 * BK, n = (min(Tk, j1 * BK) - s0) * DI;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = s0 + i / DI, dim = i % DI, j = s / BK, key = s % BK;
    float acc = dik[s * DI + dim];
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = max(int64_t(0), j * BK - off) / kDenseTokens; c < nc; ++c)
        acc += part[((((j - j0) * G + g) * nc + c) * BK + key) * DI + dim];
    dik[s * DI + dim] = acc;
  }
}

unsigned reduce_grid(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 8192)));
}

constexpr int kReduceBlocks = 128;
constexpr int kReduceThreads = 256;

// Fixed grid, fixed tree: the same sum on every run.
__global__ void reduce_rows_kernel(const float* __restrict__ x, int64_t n,
                                   double* __restrict__ block_sums) {
  const int64_t per = (n + gridDim.x - 1) / gridDim.x;
  const int64_t lo = blockIdx.x * per, hi = min(n, lo + per);
  double s = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s += x[i];
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) block_sums[blockIdx.x] = s;
}

__global__ void reduce_final_kernel(const double* __restrict__ block_sums, int n,
                                    double* __restrict__ out) {
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += block_sums[i];
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) out[0] = s;
}

double sum_rows(const Tensor& row_kl, int64_t n) {
  Tensor partial = Tensor::empty({kReduceBlocks + 1}, DType::kF64, Device::kCUDA);
  reduce_rows_kernel<<<kReduceBlocks, kReduceThreads>>>(row_kl.data<float>(), n,
                                                        partial.data<double>());
  MSA_CUDA_CHECK_LAUNCH("reduce_rows_kernel");
  reduce_final_kernel<<<1, kReduceThreads>>>(partial.data<double>(), kReduceBlocks,
                                             partial.data<double>() + kReduceBlocks);
  MSA_CUDA_CHECK_LAUNCH("reduce_final_kernel");
  return partial.slice0(kReduceBlocks, kReduceBlocks + 1).to_double_vector()[0];
}

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& lse, const Tensor& iq,
                  const Tensor& ik, const Tensor& diq, const Tensor& dik, const cpu::MsaDims& d,
                  const char* op) {
  check_dtype(q, DType::kBF16, op);
  check_dtype(k, DType::kBF16, op);
  check_dtype(iq, DType::kBF16, op);
  check_dtype(ik, DType::kBF16, op);
  check_dtype(lse, DType::kF32, op);
  check_dtype(diq, DType::kF32, op);
  check_dtype(dik, DType::kF32, op);
  MSA_CHECK(index_loss_cuda_supported(q, iq, d), "%s: sizes not supported by the GPU kernels", op);
}

// loss_grad_kernel's wgmma teacher: on sm_90a code, at the sizes it is built for (D, d_I and B of
// 64 or 128: the product's and the GPU-sized model's), unless MSA_INDEX_LOSS_WGMMA=0. At the
// paper's shape on an H100 it takes the warm-up loss from 1,011 to 737 ms at 128K and the sparse
// KL from 36.4 to 28.4 ms (docs/perf.md).
bool index_loss_wgmma(int64_t D, int64_t DI, int BK) {
  if (env_is("MSA_INDEX_LOSS_WGMMA", "0", {"1"})) return false;
  return (D == 64 || D == 128) && (DI == 64 || DI == 128) && (BK == 64 || BK == 128) &&
         sm90a_code_available();
}

template <int kD, int kDI, bool kDense>
auto loss_grad_kernel_for(bool det, bool wg) {
  auto kernel = det ? loss_grad_kernel<kD, kDI, kDense, true, false>
                    : loss_grad_kernel<kD, kDI, kDense, false, false>;
  if constexpr (kD >= 64 && kDI >= 64) {
    if (wg)
      kernel = det ? loss_grad_kernel<kD, kDI, kDense, true, true>
                   : loss_grad_kernel<kD, kDI, kDense, false, true>;
  }
  return kernel;
}

GradArgs grad_args(const cpu::MsaDims& d, double scale, double weight) {
  GradArgs a;
  a.T = d.seq;
  a.Tk = d.keys();
  a.off = d.query_offset();
  a.H = d.heads;
  a.G = d.groups;
  a.r = d.heads / d.groups;
  a.K = d.topk;
  a.BK = static_cast<int>(d.block_size);
  a.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  a.s_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.index_dim)));
  const double n_rows = static_cast<double>(d.batch * d.seq * d.groups);
  a.factor = static_cast<float>(weight / (n_rows * std::sqrt(static_cast<double>(d.index_dim))));
  return a;
}

}  // namespace

// The loss's tensors from sequence b0 on (a launch's first sequence): Tq query rows, Tk key rows.
struct SequencePointers {
  const bf16 *q, *k, *iq, *ik;
  const float* lse;
  float *diq, *dik, *row_kl;
  SequencePointers(const Tensor& q_, const Tensor& k_, const Tensor& lse_, const Tensor& iq_,
                   const Tensor& ik_, Tensor& diq_, Tensor& dik_, Tensor& row_kl_,
                   const cpu::MsaDims& d, int64_t b0) {
    const int64_t T = d.seq, Tk = d.keys(), G = d.groups, DI = d.index_dim;
    q = q_.data<bf16>() + b0 * T * d.heads * d.dim;
    k = k_.data<bf16>() + b0 * Tk * G * d.dim;
    lse = lse_.data<float>() + b0 * d.heads * T;
    iq = iq_.data<bf16>() + b0 * T * G * DI;
    ik = ik_.data<bf16>() + b0 * Tk * DI;
    diq = diq_.data<float>() + b0 * T * G * DI;
    dik = dik_.data<float>() + b0 * Tk * DI;
    row_kl = row_kl_.data<float>() + b0 * T * G;
  }
};

bool index_loss_cuda_supported(const Tensor& q, const Tensor& iq, const cpu::MsaDims& d) {
  if (env_is("MSA_INDEX_LOSS", "reference")) return false;
  if (q.dtype() != DType::kBF16 || iq.dtype() != DType::kBF16) return false;
  if (d.groups < 1 || d.heads % d.groups != 0) return false;
  const int64_t r = d.heads / d.groups;
  return pow2_16_128(d.dim) && pow2_16_128(d.index_dim) && pow2_16_128(d.block_size) && r >= 1 &&
         r <= 16 && d.topk >= 1 && d.topk <= 32 && d.seq < (int64_t(1) << 26) &&
         d.num_blocks() <= 65535 && d.groups <= 65535;
}

cpu::IndexLossSums msa_index_loss_sparse(const Tensor& q, const Tensor& k, const Tensor& lse,
                                         const Tensor& indices, const Tensor& counts,
                                         const Tensor& iq, const Tensor& ik, double scale,
                                         double weight, Tensor& diq, Tensor& dik,
                                         const cpu::MsaDims& d, SelectionCache* cache) {
  const char* op = "msa_index_loss_sparse (CUDA)";
  check_inputs(q, k, lse, iq, ik, diq, dik, d, op);
  check_dtype(indices, DType::kI32, op);
  check_dtype(counts, DType::kI32, op);
  cpu::IndexLossSums result;
  result.n_rows = d.batch * d.seq * d.groups;
  diq.zero_();
  dik.zero_();
  if (result.n_rows == 0) return result;
  // T query tokens at positions off + t, Tk keys; the work lists hold local tokens t.
  const int64_t T = d.seq, Tk = d.keys(), off = d.query_offset();
  const int64_t G = d.groups, K = d.topk, H = d.heads, r = H / G;
  const int64_t D = d.dim, DI = d.index_dim, nb = d.num_blocks(), lists = G * nb;
  const int BK = static_cast<int>(d.block_size);
  // Chunk: per token, entries (4 bytes) and the two passes' partials (2 + 3 floats) per (g, slot);
  // deterministic mode adds diq's slots (DI floats per (g, slot)).
  const bool det = deterministic();
  const int64_t per_token = G * K * (24 + (det ? DI * 4 : 0));
  const int64_t budget_tokens = std::max<int64_t>(64, (int64_t(1) << 30) / per_token);
  int64_t chunk = budget_tokens;
  // With a selection cache, the attention's query chunks when they fit (the forward's work lists
  // are then already there, kv_outer::chunk_work_lists); smaller ones of its own otherwise.
  if (cache != nullptr) chunk = std::min(chunk, kv_outer::query_chunk(d));
  if (const auto c = env_int("MSA_INDEX_LOSS_CHUNK")) chunk = std::max<int64_t>(1, *c);
  chunk = std::min(chunk, T);
  // Whole sequences: as many per launch as the attention takes (sharing its cached lists), within
  // this pass's budget.
  const int64_t nseq =
      chunk == T ? std::clamp<int64_t>(budget_tokens / T, 1, kv_outer::sequences_per_launch(d))
                 : 1;
  const int64_t launch_tokens = nseq * chunk, max_lists = nseq * lists;
  auto items_bound = [&](int64_t rows, int per_cta, int min_tiles, int64_t n_lists) {
    return kv_outer::work_items_bound(rows * K, per_cta, min_tiles, n_lists);
  };
  auto i32 = [](int64_t n) {
    return Tensor::empty({std::max<int64_t>(n, 1)}, DType::kI32, Device::kCUDA);
  };
  // start / entries: the lists' own buffers (a cache keeps its lists in new ones).
  Tensor len = i32(max_lists + 1), cursor = i32(max_lists);
  Tensor start = i32(cache != nullptr ? 1 : max_lists + 1);
  Tensor entries = i32(cache != nullptr ? 1 : launch_tokens * G * K);
  Tensor item_len = i32(max_lists + 1);
  Tensor items_a = i32(max_lists + 1), items_b = i32(max_lists + 1);
  const int64_t bound_a = items_bound(launch_tokens * G, kTokensA, kMinTilesA, max_lists);
  const int64_t bound_b = items_bound(launch_tokens * G, kTileB, kMinTilesB, max_lists);
  Tensor item_list_a = i32(bound_a), item_list_b = i32(bound_b);
  const size_t scan_bytes = kv_outer::work_list_scan_bytes(max_lists);
  Tensor scan_tmp = i32(static_cast<int64_t>(scan_bytes / 4) + 1);
  Tensor part_a = Tensor::empty({launch_tokens * G * K * 2}, DType::kF32, Device::kCUDA);
  Tensor part_b = Tensor::empty({launch_tokens * G * K * 3}, DType::kF32, Device::kCUDA);
  Tensor lseq = Tensor::empty({nseq * T * G}, DType::kF32, Device::kCUDA);
  Tensor row_kl = Tensor::empty({result.n_rows}, DType::kF32, Device::kCUDA);
  const float s_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(DI)));
  const bool wg = index_loss_wgmma(D, DI, BK);
  const GradSmem smem_b(static_cast<int>(D), static_cast<int>(DI), BK, static_cast<int>(r), wg);
  Tensor diq_part, dik_part;  // deterministic mode: GradArgs' partial slots
  if (det) {
    diq_part = Tensor::empty({launch_tokens * G * K * DI}, DType::kF32, Device::kCUDA);
    dik_part = Tensor::empty({bound_b * BK * DI}, DType::kF32, Device::kCUDA);
  }

  for (int64_t b0 = 0; b0 < d.batch; b0 += nseq) {
    const int64_t ns = std::min(nseq, d.batch - b0);
    const SequencePointers p(q, k, lse, iq, ik, diq, dik, row_kl, d, b0);
    const int32_t* idx = indices.data<int32_t>() + b0 * T * G * K;
    const int32_t* cnt = counts.data<int32_t>() + b0 * T * G;
    for (int64_t t0 = 0; t0 < T; t0 += chunk) {
      KvDims kd{T, H, G, K, r, nb, t0, std::min(T, t0 + chunk)};
      kd.nseq = ns;
      const int64_t rows = kd.chunk_queries() * G, n_lists = kd.lists();
      const unsigned row_grid = static_cast<unsigned>((rows + 255) / 256);
      // Sorted in deterministic mode (GradArgs' slot sums follow list order).
      const kv_outer::ChunkLists wl = kv_outer::chunk_work_lists(
          cache, indices, counts, idx, cnt, kd, kv_outer::ListOrder::kSortWhenDeterministic, len,
          cursor, start, entries, scan_tmp, scan_bytes);
      // Pass A: lseQ of the launch's rows.
      kv_outer::build_work_items(wl.start, n_lists, kTokensA, kMinTilesA,
                                 item_len.data<int32_t>(), items_a.data<int32_t>(),
                                 item_list_a.data<int32_t>(), scan_tmp.raw_data(), scan_bytes);
      with_pow2(DI, [&](auto di) {
        with_pow2(BK, [&](auto bk) {
          constexpr int kDI = decltype(di)::value, kBK = decltype(bk)::value;
          auto kernel = student_lse_sparse_kernel<kDI, kBK>;
          set_smem(kernel, SmemA<kDI, kBK>::kBytes);
          kernel<<<static_cast<unsigned>(items_bound(rows, kTokensA, kMinTilesA, n_lists)),
                   kWarpsA * 32, SmemA<kDI, kBK>::kBytes>>>(
              p.iq, p.ik, wl.start, items_a.data<int32_t>(), item_list_a.data<int32_t>(), n_lists,
              wl.entries, s_log2, reinterpret_cast<float2*>(part_a.data<float>()), kd, Tk, off);
          MSA_CUDA_CHECK_LAUNCH("student_lse_sparse_kernel");
        });
      });
      lse_combine_kernel<<<row_grid, 256>>>(reinterpret_cast<const float2*>(part_a.data<float>()),
                                            cnt, lseq.data<float>(), kd);
      MSA_CUDA_CHECK_LAUNCH("lse_combine_kernel");
      // Pass B: teacher, KL partials, gradients.
      kv_outer::build_work_items(wl.start, n_lists, kTileB, kMinTilesB, item_len.data<int32_t>(),
                                 items_b.data<int32_t>(), item_list_b.data<int32_t>(),
                                 scan_tmp.raw_data(), scan_bytes);
      GradArgs ga = grad_args(d, scale, weight);
      if (det) {
        ga.diq_part = diq_part.data<float>();
        ga.dik_part = dik_part.data<float>();
      }
      with_pow2(D, [&](auto dd) {
        with_pow2(DI, [&](auto di) {
          constexpr int kD = decltype(dd)::value, kDI = decltype(di)::value;
          auto kernel = loss_grad_kernel_for<kD, kDI, false>(det, wg);
          set_smem(kernel, smem_b.bytes);
          kernel<<<static_cast<unsigned>(items_bound(rows, kTileB, kMinTilesB, n_lists)),
                   BK / 16 * 32, smem_b.bytes>>>(p.q, p.k, p.lse, p.iq, p.ik, lseq.data<float>(),
                                                 wl.start, items_b.data<int32_t>(),
                                                 item_list_b.data<int32_t>(), n_lists, wl.entries,
                                                 kd, part_b.data<float>(), p.diq, p.dik, ga);
          MSA_CUDA_CHECK_LAUNCH("loss_grad_kernel (sparse)");
        });
      });
      if (det) {
        diq_slots_kernel<<<reduce_grid(rows * DI), 256>>>(diq_part.data<float>(), cnt, p.diq, kd,
                                                          DI);
        MSA_CUDA_CHECK_LAUNCH("diq_slots_kernel");
        dik_items_kernel<<<reduce_grid(ns * Tk * DI), 256>>>(
            dik_part.data<float>(), items_b.data<int32_t>(), p.dik, ns, Tk, G, nb, BK, DI);
        MSA_CUDA_CHECK_LAUNCH("dik_items_kernel");
      }
      kl_combine_kernel<false>
          <<<row_grid, 256>>>(part_b.data<float>(), cnt, lseq.data<float>(), p.row_kl, kd);
      MSA_CUDA_CHECK_LAUNCH("kl_combine_kernel");
    }
  }
  result.kl_sum = sum_rows(row_kl, result.n_rows);
  return result;
}

cpu::IndexLossSums msa_index_loss_dense(const Tensor& q, const Tensor& k, const Tensor& lse,
                                        const Tensor& iq, const Tensor& ik, double scale,
                                        double weight, Tensor& diq, Tensor& dik,
                                        const cpu::MsaDims& d) {
  const char* op = "msa_index_loss_dense (CUDA)";
  check_inputs(q, k, lse, iq, ik, diq, dik, d, op);
  cpu::IndexLossSums result;
  result.n_rows = d.batch * d.seq * d.groups;
  diq.zero_();
  dik.zero_();
  if (result.n_rows == 0) return result;
  // T query tokens at positions off + t, Tk keys.
  const int64_t T = d.seq, Tk = d.keys(), off = d.query_offset();
  const int64_t G = d.groups, H = d.heads, r = H / G;
  const int64_t D = d.dim, DI = d.index_dim, nb = d.num_blocks();
  const int BK = static_cast<int>(d.block_size);
  // Sequences per launch: the whole batch (its per-launch buffers, lseQ and the row sums, take 16
  // bytes per (t, g) row) up to grid.z's limit, so short sequences fill the GPU together;
  // MSA_KV_OUTER_SEQS caps it (A/B runs); deterministic mode one, as its slots have no sequence
  // index.
  const bool det = deterministic();
  const int64_t nseq =
      det ? 1 : kv_outer::capped_sequences_per_launch(std::min<int64_t>(d.batch, 65535 / G));
  Tensor lseq = Tensor::empty({nseq * T * G}, DType::kF32, Device::kCUDA);
  Tensor row_sums = Tensor::empty({nseq * T * G * 3}, DType::kF32, Device::kCUDA);
  Tensor row_kl = Tensor::empty({result.n_rows}, DType::kF32, Device::kCUDA);
  const float s_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(DI)));
  const bool wg = index_loss_wgmma(D, DI, BK);
  const GradSmem smem_b(static_cast<int>(D), static_cast<int>(DI), BK, static_cast<int>(r), wg);
  const GradArgs ga = grad_args(d, scale, weight);
  // Deterministic mode: key blocks in launches of jb blocks, each CTA's contributions in its own
  // slots (GradArgs), added in a fixed order after each launch; jb keeps the slots under ~1 GB.
  const int64_t nc = (T + kDenseTokens - 1) / kDenseTokens;
  const int64_t per_block = (T * G * (DI + 3) + G * nc * BK * DI) * 4;
  int64_t jb =
      det ? std::max<int64_t>(1, std::min<int64_t>(nb, (int64_t(1) << 30) / per_block)) : nb;
  if (det)
    if (const auto e = env_int("MSA_INDEX_LOSS_DET_BLOCKS"))
      jb = std::clamp<int64_t>(*e, 1, nb);  // tests: several launches at small T
  Tensor diq_part, sums_part, dik_part;
  if (det) {
    diq_part = Tensor::empty({jb * T * G * DI}, DType::kF32, Device::kCUDA);
    sums_part = Tensor::empty({jb * T * G * 3}, DType::kF32, Device::kCUDA);
    dik_part = Tensor::empty({jb * G * nc * BK * DI}, DType::kF32, Device::kCUDA);
  }
  for (int64_t b0 = 0; b0 < d.batch; b0 += nseq) {
    const int64_t ns = std::min(nseq, d.batch - b0);
    KvDims kd{T, H, G, 1, r, nb, 0, T};
    kd.nseq = ns;
    const SequencePointers p(q, k, lse, iq, ik, diq, dik, row_kl, d, b0);
    with_pow2(DI, [&](auto di) {
      constexpr int kDI = decltype(di)::value;
      auto kernel = student_lse_dense_kernel<kDI>;
      set_smem(kernel, SmemD<kDI>::kBytes);
      const dim3 grid(static_cast<unsigned>((T * G + kRowsD - 1) / kRowsD),
                      static_cast<unsigned>(ns));
      kernel<<<grid, 128, SmemD<kDI>::kBytes>>>(p.iq, p.ik, lseq.data<float>(), T, Tk, off, G,
                                                s_log2);
      MSA_CUDA_CHECK_LAUNCH("student_lse_dense_kernel");
    });
    row_sums.zero_();
    for (int64_t j0 = 0; j0 < nb; j0 += jb) {
      const int64_t j1 = std::min(nb, j0 + jb);
      GradArgs gj = ga;
      if (det) {
        gj.j0 = j0;
        gj.diq_part = diq_part.data<float>();
        gj.sums_part = sums_part.data<float>();
        gj.dik_part = dik_part.data<float>();
      }
      // Key blocks along x: the CTAs running together share one 256-token chunk, whose q rows
      // (r heads, 1 MB at d 128, r 16) stay in L2 for all of them; with chunks along x every
      // key block streamed all of q from memory again (T / B / 2 times on average). nc fits
      // grid.y: index_loss_cuda_supported bounds T to 65535 blocks of at most 128 tokens.
      const dim3 grid(static_cast<unsigned>(j1 - j0), static_cast<unsigned>(nc),
                      static_cast<unsigned>(ns * G));
      with_pow2(D, [&](auto dd) {
        with_pow2(DI, [&](auto di) {
          constexpr int kD = decltype(dd)::value, kDI = decltype(di)::value;
          auto kernel = loss_grad_kernel_for<kD, kDI, true>(det, wg);
          set_smem(kernel, smem_b.bytes);
          kernel<<<grid, BK / 16 * 32, smem_b.bytes>>>(
              p.q, p.k, p.lse, p.iq, p.ik, lseq.data<float>(), nullptr, nullptr, nullptr, 0,
              nullptr, kd, row_sums.data<float>(), p.diq, p.dik, gj);
          MSA_CUDA_CHECK_LAUNCH("loss_grad_kernel (dense)");
        });
      });
      if (det) {
        const int64_t t_first = std::min(T, std::max<int64_t>(0, j0 * BK - off));
        dense_rows_kernel<<<reduce_grid((T - t_first) * G * (DI + 3)), 256>>>(
            diq_part.data<float>(), sums_part.data<float>(), p.diq, row_sums.data<float>(), T, off,
            G, DI, BK, j0, j1);
        MSA_CUDA_CHECK_LAUNCH("dense_rows_kernel");
        dense_dik_kernel<<<reduce_grid((std::min(Tk, j1 * BK) - j0 * BK) * DI), 256>>>(
            dik_part.data<float>(), p.dik, Tk, off, G, DI, BK, j0, j1, nc);
        MSA_CUDA_CHECK_LAUNCH("dense_dik_kernel");
      }
    }
    kl_combine_kernel<true><<<static_cast<unsigned>((ns * T * G + 255) / 256), 256>>>(
        row_sums.data<float>(), nullptr, lseq.data<float>(), p.row_kl, kd);
    MSA_CUDA_CHECK_LAUNCH("kl_combine_kernel");
  }
  result.kl_sum = sum_rows(row_kl, result.n_rows);
  return result;
}

}  // namespace msa::cuda
