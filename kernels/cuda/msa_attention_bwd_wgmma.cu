// Block-sparse attention backward, KV-outer, on Hopper warpgroup MMAs (wgmma, sm_90a), for
// head_dim 128 and block size 128: the same work lists, dQ partial rows and dq_combine as the
// mma.sync kernel in msa_attention_kv_outer.cu (its comment above kv_outer_backward_kernel gives
// the math).
//
// Why: the mma.sync backward runs one CTA of 8 warps per SM at 255 registers, re-reading K_j, V_j
// and every tile operand through ldmatrix for each 16-key warp slice; ncu showed the shared-memory
// pipe, not the tensor cores, as its limit (~120 TFLOP/s). Here each warpgroup's MMAs read shared
// memory once per 64 x N tile.
//
// Layout: CTA = 2 warpgroups, one work item (a run of tiles of one list: long lists, the blocks
// every query selects, are split over several CTAs); warpgroup w owns keys 64 w .. 64 w + 63 of
// block j (the M rows of its MMAs) and keeps dK_w, dV_w (64 keys x 128 dims, f32) in registers
// for the whole item. For
// each tile of 64 query rows (64 / r queries x r heads; Q, dO, lse, D in a 3-stage cp.async ring):
//   S^T_w  = K_w Q^T      wgmma m64n64k16   A = K_w, B = Q        (shared, K-major)
//   dP^T_w = V_w dO^T     wgmma m64n64k16   A = V_w, B = dO       (shared, K-major)
//   P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - D)            (registers)
//   dV_w  += P^T dO       wgmma m64n128k16  A = P^T (registers), B = dO (shared, MN-major)
//   dK_w  += dS^T Q       wgmma m64n128k16  A = dS^T (registers), B = Q (shared, MN-major)
//   dS^T -> shared memory as dS [rows][keys] (stmatrix .trans), then both warpgroups:
//   dQ[:, 64 w ..] = dS K_j   wgmma m64n64k16  A = dS, B = K_j (shared, MN-major)
// Every operand sits in shared memory in the one 128-byte-swizzled tile layout of wgmma_sm90.cuh;
// the MN-major reads need no transposed copies. dK/dV of a key have one writer (this CTA) unless
// its list is split, whose items add atomically (one f32 add per key and dim per item; in
// deterministic mode lists are not split); a (query, slot)'s dQ goes to its own partial row.
#include <cuda_runtime.h>

#include "core/cuda/cuda_check.h"
#include "kernels/cuda/kv_outer_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace msa::cuda::kv_outer {
namespace {

constexpr int kD = 128, kBK = 128, kRows = 64;
constexpr int kThreads = 256;  // two warpgroups
constexpr uint32_t kKvBytes = kBK * kD * 2;      // K_j or V_j: 32 KB
constexpr uint32_t kTileBytes = kRows * kD * 2;  // Q or dO of one tile: 16 KB
constexpr uint32_t kDsBytes = kRows * kBK * 2;   // dS: 16 KB
// Tiles in flight: tile u + kStages - 1 loads while u computes (two stages were not enough: the
// tile-start wait for cp.async data was the second-largest stall).
constexpr int kStages = 3;  // 4: no faster (43.4 vs 43.1 ms at 128K)
// K, V | kStages x (Q, dO) | dS | kStages x (lse, D, last key) per row
constexpr uint32_t kStatsOffset = 2 * kKvBytes + kStages * 2 * kTileBytes + kDsBytes;
constexpr size_t kSmemBytes = kStatsOffset + kStages * 3 * kRows * 4 + 1024;

__global__ void __launch_bounds__(kThreads, 1)
    wgmma_backward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                          const bf16* __restrict__ v, const bf16* __restrict__ dout,
                          const float* __restrict__ lse, const float* __restrict__ dsum,
                          const int32_t* __restrict__ list_start,
                          const int32_t* __restrict__ item_start,
                          const int32_t* __restrict__ item_list, int64_t lists,
                          const int32_t* __restrict__ entries, float scale,
                          bf16* __restrict__ dq_part, float* __restrict__ dk_acc,
                          float* __restrict__ dv_acc, KvDims a, int min_tiles) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = sw128_align(smem_raw);
  unsigned char* ks = smem;
  unsigned char* vs = smem + kKvBytes;
  unsigned char* tiles = smem + 2 * kKvBytes;  // [stage][Q, dO]
  unsigned char* ds_s = tiles + kStages * 2 * kTileBytes;
  float* stats = reinterpret_cast<float*>(smem + kStatsOffset);  // [buf][lse, D, limit][row]
  const float scale_log2 = scale * 1.4426950408889634f;

  const int r = static_cast<int>(a.r), rows_q = kRows / r;
  BackwardItem w;
  if (!find_backward_item(blockIdx.x, item_start, item_list, list_start, lists, a, rows_q,
                          min_tiles, w))
    return;  // past the last item (the grid is a bound); empty lists have none
  const int64_t g = w.g, j = w.j, b = w.b;
  const int32_t begin = w.begin, end = w.end;
  const int n_tiles = w.n_tiles;
  // Sequence b of the launch: its query rows (q, dO), lse / D rows and keys.
  q += b * a.S * a.H * kD;
  dout += b * a.S * a.H * kD;
  lse += b * a.H * a.S;
  dsum += b * a.H * a.S;
  k += b * a.Sk * a.G * kD;
  v += b * a.Sk * a.G * kD;
  dk_acc += b * a.Sk * a.G * kD;
  dv_acc += b * a.Sk * a.G * kD;
  // Query t attends this block's keys up to min(t + q_off, Sk - 1) - j kBK (32-bit: as few
  // registers as the Tq == Tk code).
  const int lim_shift = static_cast<int>(a.q_off - j * kBK);
  const int lim_max = static_cast<int>(a.Sk - 1 - j * kBK);
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;

  for (int c = threadIdx.x; c < kBK * (kD / 8); c += kThreads) {
    const int row = c / (kD / 8), col = (c % (kD / 8)) * 8;
    const int64_t s = j * kBK + row;
    const int64_t off = ((s < a.Sk ? s : 0) * a.G + g) * kD + col;
    cp_async_16(ks + sw128_offset(kBK, row, col), k + off, s < a.Sk);
    cp_async_16(vs + sw128_offset(kBK, row, col), v + off, s < a.Sk);
  }
  // Threads 4 R .. 4 R + 3 copy tile row R (Q and dO, alternate 16-byte pieces; the first of them
  // also lse, D and the row's last attended key of this block, -1 for padding rows), so a thread
  // needs one work-list entry per tile, read a tile ahead of its use (ncu: global-load latency,
  // long scoreboard, was the largest stall).
  const int my_row = threadIdx.x / 4;
  auto row_entry = [&](int tile) -> int32_t {
    const int e = begin + tile * rows_q + my_row / r;
    return tile < n_tiles && e < end ? ldg_issue_here(entries + e) : -1;
  };
  auto load_tile = [&](int32_t entry, int buf) {
    unsigned char* qs = tiles + buf * 2 * kTileBytes;
    unsigned char* dos = qs + kTileBytes;
    const bool valid = entry >= 0;
    const int64_t t = valid ? entry >> 5 : 0, h = g * r + my_row % r;
    const int64_t off = (t * a.H + h) * kD;
#pragma unroll
    for (int it = 0; it < kD / 32; ++it) {
      const int col = ((threadIdx.x & 3) + 4 * it) * 8;
      cp_async_16(qs + sw128_offset(kRows, my_row, col), q + off + col, valid);
      cp_async_16(dos + sw128_offset(kRows, my_row, col), dout + off + col, valid);
    }
    if ((threadIdx.x & 3) == 0) {
      float* st = stats + buf * 3 * kRows;
      cp_async_4(st + my_row, lse + h * a.S + t, valid);
      cp_async_4(st + kRows + my_row, dsum + h * a.S + t, valid);
      reinterpret_cast<int*>(st + 2 * kRows)[my_row] =
          valid ? min(static_cast<int>(t) + lim_shift, lim_max) : -1;
    }
    cp_async_commit();
  };
  // This thread's dQ rows 16 warp + grp and + 8: their entries, read at the tile's start.
  auto dq_entry = [&](int tile, int h) -> int32_t {
    const int e = begin + tile * rows_q + (16 * warp + grp + 8 * h) / r;
    return e < end ? ldg_issue_here(entries + e) : -1;
  };

  float dk_c[64], dv_c[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) dk_c[i] = dv_c[i] = 0.0f;
  const uint32_t kw_off = wg * 64 * 128;  // this warpgroup's 64 keys inside K_j / V_j tiles
  // Tiles 0 .. kStages - 2 in flight (tile 0's group carries K and V); empty groups keep the
  // wait count uniform.
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles) load_tile(row_entry(st), st); else cp_async_commit();
  }
  int32_t entry_next = row_entry(kStages - 1);
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buf = tile % kStages;
    cp_async_wait<kStages - 2>();  // this tile's group (later tiles' may still be in flight)
    fence_proxy_async();
    __syncthreads();  // this tile from every thread; the previous tile's MMAs all complete
    if (tile + kStages - 1 < n_tiles) load_tile(entry_next, (tile + kStages - 1) % kStages);
    else cp_async_commit();
    entry_next = row_entry(tile + kStages);
    const int32_t dq_rows[2] = {dq_entry(tile, 0), dq_entry(tile, 1)};
    unsigned char* qs = tiles + buf * 2 * kTileBytes;
    unsigned char* dos = qs + kTileBytes;
    const float* st = stats + buf * 3 * kRows;

    // S^T_w and dP^T_w: 64 keys x 64 rows each.
    float sc[32], dp[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t kv_step = (kk / 4) * kBK * 128 + (kk % 4) * 32 + kw_off;
      const uint32_t t_step = (kk / 4) * kRows * 128 + (kk % 4) * 32;
      wgmma_m64n64k16_ss<0>(sc, sw128_desc(ks + kv_step), sw128_desc(qs + t_step), kk > 0);
      wgmma_m64n64k16_ss<0>(dp, sw128_desc(vs + kv_step), sw128_desc(dos + t_step), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(sc);
    fence_operands(dp);

    // P^T and dS^T. Accumulator element i: key 64 wg + 16 warp + grp + 8 ((i / 2) & 1), tile row
    // 8 (i / 4) + 2 tig + (i & 1).
    const int key0 = 64 * wg + 16 * warp + grp;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int R = 8 * (i / 4) + 2 * tig + (i & 1);
      const int key = key0 + 8 * ((i / 2) & 1);
      const float p = key <= reinterpret_cast<const int*>(st + 2 * kRows)[R]
                          ? fast_exp2(fmaf(sc[i], scale_log2, -st[R] * 1.4426950408889634f))
                          : 0.0f;
      sc[i] = p;
      dp[i] = p * (dp[i] - st[kRows + R]);
    }
    uint32_t pa[4][4], da[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const float(&p_lo)[4] = *reinterpret_cast<const float(*)[4]>(sc + 8 * kk);
      const float(&p_hi)[4] = *reinterpret_cast<const float(*)[4]>(sc + 8 * kk + 4);
      const float(&d_lo)[4] = *reinterpret_cast<const float(*)[4]>(dp + 8 * kk);
      const float(&d_hi)[4] = *reinterpret_cast<const float(*)[4]>(dp + 8 * kk + 4);
      c_to_a_fragment(pa[kk], p_lo, p_hi);
      c_to_a_fragment(da[kk], d_lo, d_hi);
    }
    // dS [rows][keys] for dQ: matrix m of stmatrix k-step kk is tile rows 8 (2 kk + m / 2) ..,
    // keys 64 wg + 16 warp + 8 (m % 2) ..; lane l addresses row l % 8 of matrix l / 8.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const int m = lane / 8;
      const int R = 8 * (2 * kk + m / 2) + lane % 8;
      stmatrix_x4_trans(ds_s + sw128_offset(kRows, R, 64 * wg + 16 * warp + 8 * (m % 2)), da[kk]);
    }
    // dV_w += P^T dO, dK_w += dS^T Q: B = the tile read MN-major (k-step = 16 rows = 2048 bytes,
    // 64-dim tiles 64 x 128 bytes apart).
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      wgmma_m64n128k16_rs<1>(dv_c, pa[kk], sw128_desc(dos + kk * 2048, kRows * 128), 1);
      wgmma_m64n128k16_rs<1>(dk_c, da[kk], sw128_desc(qs + kk * 2048, kRows * 128), 1);
    }
    wgmma_commit();
    fence_proxy_async();
    __syncthreads();  // dS from both warpgroups
    // dQ[:, 64 wg .. 64 wg + 63] = dS K_j: A = dS (K-major), B = K_j's dims 64 wg .. read
    // MN-major (k-step = 16 keys = 2048 bytes).
    float qc[32];
    wgmma_fence();  // qc's registers: last read by the previous tile's stores
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)
      wgmma_m64n64k16_ss<1>(qc, sw128_desc(ds_s + (kk / 4) * kRows * 128 + (kk % 4) * 32),
                            sw128_desc(ks + wg * kBK * 128 + kk * 2048, kBK * 128), kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(qc);
    fence_operands(dv_c);
    fence_operands(dk_c);
    fence_operands(pa);
    fence_operands(da);

    // dQ rows: tile row 16 warp + grp + 8 h, dims 64 wg + 8 (i / 4) + 2 tig (+1).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int R = 16 * warp + grp + 8 * h;
      if (dq_rows[h] < 0) continue;
      const int64_t t = dq_rows[h] >> 5, slot = dq_rows[h] & 31;
      const int64_t prow = ((a.chunk_row(b, t) * a.G + g) * a.K + slot) * a.r + R % r;
      bf16* dst = dq_part + prow * kD + 64 * wg + 2 * tig;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
        *reinterpret_cast<uint32_t*>(dst + 8 * nt) =
            pack_bf16(qc[4 * nt + 2 * h] * scale, qc[4 * nt + 2 * h + 1] * scale);
    }
  }
  // This warpgroup's 64 keys into the f32 accumulators, two adjacent dims per 8-byte access. A
  // list split over several items adds atomically; otherwise this CTA is their only writer in
  // this chunk (the first chunk stores, later ones add). Blocks no query of the first chunk
  // selected have no item and store nothing: the host's zeroing of dk_acc/dv_acc before the
  // chunks is what makes them start at 0.
  const bool first_chunk = a.t0 == 0;
#pragma unroll
  for (int i = 0; i < 64; i += 2) {
    const int64_t s = j * kBK + 64 * wg + 16 * warp + grp + 8 * ((i / 2) & 1);
    if (s >= a.Sk) continue;
    const int64_t off = (s * a.G + g) * kD + 8 * (i / 4) + 2 * tig;
    float2 dkv = make_float2(dk_c[i] * scale, dk_c[i + 1] * scale);
    float2 dvv = make_float2(dv_c[i], dv_c[i + 1]);
    float2* dkp = reinterpret_cast<float2*>(dk_acc + off);
    float2* dvp = reinterpret_cast<float2*>(dv_acc + off);
    if (w.shared) {
      atomicAdd(dkp, dkv);
      atomicAdd(dvp, dvv);
      continue;
    }
    if (!first_chunk) {
      const float2 k0 = *dkp, v0 = *dvp;
      dkv.x += k0.x, dkv.y += k0.y, dvv.x += v0.x, dvv.y += v0.y;
    }
    *dkp = dkv;
    *dvp = dvv;
  }
#else
  __trap();  // never chosen without sm_90a code (wgmma_available)
#endif
}

}  // namespace

int wgmma_backward_queries_per_tile(int64_t r) { return static_cast<int>(kRows / r); }

void launch_wgmma_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* dout,
                           const float* lse, const float* dsum, const int32_t* list_start,
                           const int32_t* item_start, const int32_t* item_list,
                           const int32_t* entries, float scale, bf16* dq_part, float* dk_acc,
                           float* dv_acc, const KvDims& a, int64_t lists, int64_t max_items,
                           int min_tiles) {
  MSA_CUDA_CHECK(cudaFuncSetAttribute(wgmma_backward_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(kSmemBytes)));
  wgmma_backward_kernel<<<static_cast<unsigned>(max_items), kThreads, kSmemBytes>>>(
      q, k, v, dout, lse, dsum, list_start, item_start, item_list, lists, entries, scale, dq_part,
      dk_acc, dv_acc, a, min_tiles);
  MSA_CUDA_CHECK_LAUNCH("wgmma_backward_kernel");
}

}  // namespace msa::cuda::kv_outer
