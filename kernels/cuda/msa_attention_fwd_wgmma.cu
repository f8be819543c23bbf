// Block-sparse attention forward, KV-outer, on Hopper warpgroup MMAs (wgmma, sm_90a), for
// head_dim 128 and block size 128: the same work lists, partial rows and combine as the mma.sync
// kernel in msa_attention_kv_outer.cu (its top comment explains KV-outer and the split-KV merge).
//
// Why wgmma here: the mma.sync kernel gives each warp 16 query rows, so every warp re-reads the
// whole K_j and V_j block (64 KB) from shared memory through ldmatrix per 16 rows; ncu showed
// shared-memory bandwidth and issue slots, not the tensor cores, bounding it. A wgmma m64n128k16
// reads its B operand (K_j, V_j) from shared memory once for 64 rows, and the accumulators need no
// ldmatrix at all, so the same tile costs a quarter of the shared-memory traffic and far fewer
// instructions.
//
// Layout: CTA = one warpgroup holding K_j and V_j^T (both K-major, 128-byte swizzled: see
// wgmma_sm90.cuh), streaming 64-row query tiles (64 / r queries x r heads) through a two-buffer
// cp.async pipeline (the next tile's rows load while this one computes):
//   S = Q K_j^T   8 x wgmma m64n128k16, A and B from shared memory
//   P = exp(S - rowmax) in registers (the mma.sync C layout), row sums by quad shuffles
//   O = P V_j     8 x wgmma m64n128k16, A = P from registers, B = V_j^T from shared memory
// V_j is transposed once per CTA on its way into shared memory (register shuffle of key pairs) so
// both MMAs use the one K-major layout; a CTA serves at least kWgmmaMinTilesPerCta x 64 rows, so
// that costs little. No TMA loads: query rows are gathered through the work list (TMA's tiled
// loads need contiguous rows), and K_j/V_j are one load per CTA. The partial rows leave by bulk
// copies (cp.async.bulk, shared to global): each query's r rows are one contiguous run there, so
// a warp stages its 16 rows and one thread per run hands them to the copy engine (thread copies of
// staged rows cost 1.3-1.9 ms more at 128K, paper shape: docs/perf.md). Two CTAs share an SM and
// run out of step, so one's softmax and loads overlap the other's MMAs.
#include <cuda_runtime.h>

#include "core/cuda/cuda_check.h"
#include "core/env_switch.h"
#include "kernels/cuda/kernel_dispatch.h"
#include "kernels/cuda/kv_outer_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace msa::cuda::kv_outer {
namespace {

constexpr int kD = 128, kBK = 128;
// One warpgroup per CTA and two CTAs per SM (97 KB of shared memory each): one CTA's K/V load
// overlaps the other's MMAs, which one CTA of two warpgroups per SM could not hide (measured: no
// faster than mma.sync that way).
constexpr int kThreads = 128;
constexpr int kTileRows = 64;                         // query rows per warpgroup tile
constexpr uint32_t kKvTileBytes = kBK * kD * 2;       // K_j or V_j^T: 32 KB
constexpr uint32_t kQTileBytes = kTileRows * kD * 2;  // one Q buffer: 16 KB
// K_j, V_j^T, two Q buffers and the partial rows' staging buffer: two CTAs fill an SM's shared
// memory exactly, 2 x (113 KB + 1 KB the driver reserves per CTA) = 228 KB.
constexpr size_t kSmemBytes = 2 * kKvTileBytes + 3 * kQTileBytes + 1024;

__global__ void __launch_bounds__(kThreads, 2)
    wgmma_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, const int32_t* __restrict__ list_start,
                         const int32_t* __restrict__ item_start,
                         const int32_t* __restrict__ item_list, int64_t lists,
                         const int32_t* __restrict__ entries, float scale_log2,
                         bf16* __restrict__ part, float* __restrict__ lse_part, KvDims a,
                         int min_tiles) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = sw128_align(smem_raw);
  unsigned char* ks = smem;
  unsigned char* vts = smem + kKvTileBytes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  unsigned char* qs = smem + 2 * kKvTileBytes;

  const int r = static_cast<int>(a.r);
  const int rows_q = kTileRows / r;  // queries per tile
  WorkItem w;
  if (!find_work_item(static_cast<int32_t>(blockIdx.x), item_start, item_list, list_start, lists,
                      a, rows_q, min_tiles, w))
    return;
  const int64_t j = w.j, g = w.g, b = w.b;
  const int32_t begin = w.begin, end = w.end;
  const int u_begin = w.tile_begin, u_end = w.tile_end;
  // Query t attends this block's keys up to min(t + q_off, Sk - 1) - j kBK (32-bit: as few
  // registers as the Tq == Tk code).
  const int lim_shift = static_cast<int>(a.q_off - j * kBK);
  const int lim_max = static_cast<int>(a.Sk - 1 - j * kBK);

  // K_j by cp.async into its swizzled tile; V_j through registers, key pairs packed so V_j^T's
  // rows (head dims) hold keys contiguously. Keys past the last one (Sk) are zeros.
  for (int c = threadIdx.x; c < kBK * (kD / 8); c += kThreads) {
    const int row = c / (kD / 8), col = (c % (kD / 8)) * 8;
    const int64_t s = j * kBK + row;
    const int64_t off = ((b * a.Sk + (s < a.Sk ? s : 0)) * a.G + g) * kD + col;
    cp_async_16(ks + sw128_offset(kBK, row, col), k + off, s < a.Sk);
  }
  cp_async_commit();
  // All of a thread's V loads are issued before its stores (one memory round trip, not eight).
  constexpr int kVIters = (kBK / 2) * (kD / 8) / kThreads;
  uint4 x0[kVIters], x1[kVIters];
#pragma unroll
  for (int it = 0; it < kVIters; ++it) {
    const int c = threadIdx.x + it * kThreads;
    const int pair = c % (kBK / 2), col = (c / (kBK / 2)) * 8;  // lanes: consecutive key pairs
    const int64_t s = j * kBK + 2 * pair;
    x0[it] = x1[it] = make_uint4(0, 0, 0, 0);
    if (s < a.Sk)
      x0[it] = *reinterpret_cast<const uint4*>(v + ((b * a.Sk + s) * a.G + g) * kD + col);
    if (s + 1 < a.Sk)
      x1[it] = *reinterpret_cast<const uint4*>(v + ((b * a.Sk + s + 1) * a.G + g) * kD + col);
  }
#pragma unroll
  for (int it = 0; it < kVIters; ++it) {
    const int c = threadIdx.x + it * kThreads;
    const int pair = c % (kBK / 2), col = (c / (kBK / 2)) * 8;
    const uint32_t w0[4] = {x0[it].x, x0[it].y, x0[it].z, x0[it].w};
    const uint32_t w1[4] = {x1[it].x, x1[it].y, x1[it].z, x1[it].w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      // Dims col + 2e (low halves) and col + 2e + 1 (high halves) of keys 2 pair, 2 pair + 1.
      const uint32_t lo = (w0[e] & 0xFFFFu) | (w1[e] << 16);
      const uint32_t hi = (w0[e] >> 16) | (w1[e] & 0xFFFF0000u);
      *reinterpret_cast<uint32_t*>(vts + sw128_offset(kD, col + 2 * e, 2 * pair)) = lo;
      *reinterpret_cast<uint32_t*>(vts + sw128_offset(kD, col + 2 * e + 1, 2 * pair)) = hi;
    }
  }

  // Thread pair (2 R, 2 R + 1) copies tile row R, alternate 16-byte pieces (each pair reads whole
  // 32-byte sectors), so a thread needs one work-list entry per tile. Entries are read a tile
  // ahead of their use: a global load's latency otherwise stalls every tile twice (ncu: long
  // scoreboard was the largest stall).
  const int my_row = threadIdx.x / 2;
  auto row_entry = [&](int u) -> int32_t {
    const int e = begin + u * rows_q + my_row / r;
    return u < u_end && e < end ? ldg_issue_here(entries + e) : -1;
  };
  auto load_q = [&](int32_t entry, int buf) {
    const bool valid = entry >= 0;
    const bf16* src = q + ((b * a.S + (valid ? entry >> 5 : 0)) * a.H + g * r + my_row % r) *
                              static_cast<int64_t>(kD);
    unsigned char* dst = qs + buf * kQTileBytes;
#pragma unroll
    for (int it = 0; it < kD / 16; ++it) {
      const int col = ((threadIdx.x & 1) + 2 * it) * 8;
      cp_async_16(dst + sw128_offset(kTileRows, my_row, col), src + col, valid);
    }
    cp_async_commit();
  };
  // my_row's entries of tiles u, u + 1 (loaded or loading) and u + 2 (read a tile ahead).
  int32_t entry_u = row_entry(u_begin);
  if (u_begin < u_end) load_q(entry_u, 0);
  int32_t entry_u1 = row_entry(u_begin + 1), entry_u2 = row_entry(u_begin + 2);
  // This thread's accumulator rows R0 = 16 warp + grp and R0 + 8: their entries, a tile ahead.
  auto info_entry = [&](int u, int h) -> int32_t {
    const int e = begin + u * rows_q + (16 * warp + grp + 8 * h) / r;
    return u < u_end && e < end ? ldg_issue_here(entries + e) : -1;
  };
  int32_t info_next[2] = {info_entry(u_begin, 0), info_entry(u_begin, 1)};
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();  // K_j, V_j^T and the first Q tile from every thread
  if (u_begin + 1 < u_end) load_q(entry_u1, 1);

  const uint64_t k_desc = sw128_desc(ks), vt_desc = sw128_desc(vts);
  // S = Q K_j^T of the tile in buffer qbuf. Each tile's S runs on the tensor cores while the
  // previous tile's partial rows are copied out; issue and wait stay in one loop iteration, no
  // branch between them (else ptxas inserts a wait right after the issue: warning C7517).
  auto issue_s = [&](float (&sc)[64], int qbuf) {
    const uint64_t q_desc = sw128_desc(qs + qbuf * kQTileBytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      // k-slice kk: 64-column tile kk / 4, 32 bytes per slice within it (descriptor units: 16 B).
      const uint64_t step = ((kk / 4) * kTileRows * 128 + (kk % 4) * 32) >> 4;
      const uint64_t kstep = ((kk / 4) * kBK * 128 + (kk % 4) * 32) >> 4;
      wgmma_m64n128k16_ss<0>(sc, q_desc + step, k_desc + kstep, kk > 0);
    }
    wgmma_commit();
  };
  float sc[64], oc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) sc[i] = oc[i] = 0.0f;
  issue_s(sc, 0);  // a work item has at least one tile
  wgmma_wait<0>();
  fence_operands(sc);
  int buf = 0;
  for (int u = u_begin; u < u_end; ++u, buf ^= 1) {
    const int32_t entry_u3 = row_entry(u + 3);
    const int32_t info[2] = {info_next[0], info_next[1]};
    info_next[0] = info_entry(u + 1, 0);
    info_next[1] = info_entry(u + 1, 1);

    // This thread's rows R0 = 16 warp + grp, R1 = R0 + 8: query, slot, head.
    int64_t t_row[2];
    int slot_row[2], head_row[2];
    bool valid_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      valid_row[h] = info[h] >= 0;
      const int32_t entry = valid_row[h] ? info[h] : 0;
      t_row[h] = entry >> 5;
      slot_row[h] = entry & 31;
      head_row[h] = (16 * warp + grp + 8 * h) % r;
    }
    int lim[2];  // each row's last attended key of this block
#pragma unroll
    for (int h = 0; h < 2; ++h) lim[h] = min(static_cast<int>(t_row[h]) + lim_shift, lim_max);
    float mxs[2], sum[2];
    masked_block_softmax(sc, lim, tig, scale_log2, mxs, sum);

    // O = P V_j: P's k-slice kk is the C fragments of key tiles 2 kk and 2 kk + 1.
    uint32_t pa[kBK / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      const float(&lo)[4] = *reinterpret_cast<const float(*)[4]>(sc + 8 * kk);
      const float(&hi)[4] = *reinterpret_cast<const float(*)[4]>(sc + 8 * kk + 4);
      c_to_a_fragment(pa[kk], lo, hi);
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      const uint64_t vstep = ((kk / 4) * kD * 128 + (kk % 4) * 32) >> 4;
      wgmma_m64n128k16_rs<0>(oc, pa[kk], vt_desc + vstep, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(oc);
    fence_operands(pa);

    // Block-normalized partial rows (fragment order: this thread's 32 values of row R are its
    // contiguous elements tig * 32 ..), staged in shared memory and copied out by the bulk-copy
    // engine (direct 16-byte stores from the fragments half-filled 32-byte sectors, and thread
    // copies of staged rows cost issue slots and stalls). Partial row prow's 16-byte chunk c sits
    // at chunk c ^ (prow % 8), in global memory (the combine undoes it) as in the staged tile, so
    // a warp's staging stores spread over the banks.
    unsigned char* stage = qs + 2 * kQTileBytes;
    // This warp's bulk copies of the previous tile have read their rows (issued a tile ago).
    if (tig == 0) bulk_wait_read<0>();
    __syncwarp();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int R = 16 * warp + grp + 8 * h;
      const float inv = 1.0f / sum[h];
      const int64_t prow =
          ((a.chunk_row(b, t_row[h]) * a.G + g) * a.K + slot_row[h]) * a.r + head_row[h];
      const int key = static_cast<int>(prow & 7);
#pragma unroll
      for (int nt = 0; nt < kD / 8; nt += 4) {
        const float* o = oc + 4 * nt + 2 * h;
        const int c = tig * 4 + nt / 4;
        *reinterpret_cast<uint4*>(stage + R * 256 + ((c ^ key) << 4)) =
            make_uint4(pack_bf16(o[0] * inv, o[1] * inv), pack_bf16(o[4] * inv, o[5] * inv),
                       pack_bf16(o[8] * inv, o[9] * inv), pack_bf16(o[12] * inv, o[13] * inv));
      }
      if (tig == 0 && valid_row[h]) lse_part[prow] = (mxs[h] + __log2f(sum[h])) * 0.69314718056f;
    }
    // A warp's 16 staged rows are runs of consecutive rows of one query (its heads), each one
    // contiguous run of partial rows in global memory: the run's first row's thread copies it.
    fence_proxy_async();
    __syncwarp();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int R = 16 * warp + grp + 8 * h;
      if (tig == 0 && valid_row[h] && (R % r == 0 || R % 16 == 0)) {
        const int rows = min(r - R % r, 16 - R % 16);
        const int64_t prow =
            ((a.chunk_row(b, t_row[h]) * a.G + g) * a.K + slot_row[h]) * a.r + head_row[h];
        bulk_store_s2g(part + prow * kD, stage + R * 256, static_cast<uint32_t>(rows) * 256);
      }
    }
    if (tig == 0) bulk_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();  // tile u + 1's Q rows from every thread
    // The next tile's S (after the last tile: a harmless product of the idle buffer, never read),
    // while the bulk copies drain; this tile's Q buffer is free (S done) for tile u + 2.
    issue_s(sc, buf ^ 1);
    if (u + 2 < u_end) load_q(entry_u2, buf);
    entry_u1 = entry_u2;
    entry_u2 = entry_u3;
    wgmma_wait<0>();
    fence_operands(sc);
  }
  if (tig == 0) bulk_wait_read<0>();  // shared memory outlives its bulk copies' reads
#else
  __trap();  // never chosen without sm_90a code (wgmma_available)
#endif
}

}  // namespace

bool wgmma_available() {
  return !env_is("MSA_KV_OUTER_WGMMA", "0", {"1"}) && sm90a_code_available();
}

int wgmma_forward_queries_per_tile(int64_t r) { return static_cast<int>(kTileRows / r); }

void launch_wgmma_forward(const bf16* q, const bf16* k, const bf16* v, const int32_t* list_start,
                          const int32_t* item_start, const int32_t* item_list, int64_t lists, const int32_t* entries,
                          float scale_log2, bf16* part, float* lse_part, const KvDims& a,
                          int64_t max_items, int min_tiles) {
  // Per call: the attribute belongs to the current device (a host call of microseconds).
  MSA_CUDA_CHECK(cudaFuncSetAttribute(wgmma_forward_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(kSmemBytes)));
  wgmma_forward_kernel<<<static_cast<unsigned>(max_items), kThreads, kSmemBytes>>>(
      q, k, v, list_start, item_start, item_list, lists, entries, scale_log2, part, lse_part, a,
      min_tiles);
  MSA_CUDA_CHECK_LAUNCH("wgmma_forward_kernel");
}

}  // namespace msa::cuda::kv_outer
