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
// that costs little. No TMA: query rows are gathered through the work list (TMA's tiled loads need
// contiguous rows), and K_j/V_j are one load per CTA. Two CTAs share an SM and run out of step, so
// one's softmax and loads overlap the other's MMAs.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "core/cuda/cuda_check.h"
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
constexpr int kTileRows = 64;  // query rows per warpgroup tile
constexpr uint32_t kKvTileBytes = kBK * kD * 2;        // K_j or V_j^T: 32 KB
constexpr uint32_t kQTileBytes = kTileRows * kD * 2;   // one Q buffer: 16 KB
constexpr size_t kSmemBytes = 2 * kKvTileBytes + 2 * kQTileBytes + 1024;

__global__ void __launch_bounds__(kThreads, 2)
    wgmma_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, const int32_t* __restrict__ list_start,
                         const int32_t* __restrict__ item_start, int64_t lists,
                         const int32_t* __restrict__ entries, float scale_log2,
                         bf16* __restrict__ part, float* __restrict__ lse_part, KvDims a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  // sw128 tiles must start 1024-byte aligned.
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* ks = smem;
  unsigned char* vts = smem + kKvTileBytes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  unsigned char* qs = smem + 2 * kKvTileBytes;

  const int32_t item = static_cast<int32_t>(blockIdx.x);
  if (item >= item_start[lists]) return;
  int64_t lo = 0, hi = lists;  // the last list whose first item is <= item
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (item_start[mid] <= item) lo = mid; else hi = mid;
  }
  const int64_t list = lo;
  const int64_t j = list % a.nb, g = (list / a.nb) % a.G, b = list / (a.nb * a.G);
  const int32_t begin = list_start[list], end = list_start[list + 1];
  const int r = static_cast<int>(a.r);
  const int rows_q = kTileRows / r;  // queries per tile
  const int n_tiles = (end - begin + rows_q - 1) / rows_q;
  const int per_split = forward_per_split(n_tiles, kWgmmaMinTilesPerCta);
  const int split = item - item_start[list];
  const int u_begin = split * per_split, u_end = min(n_tiles, u_begin + per_split);

  // K_j by cp.async into its swizzled tile; V_j through registers, key pairs packed so V_j^T's
  // rows (head dims) hold keys contiguously. Keys past the sequence end are zeros.
  for (int c = threadIdx.x; c < kBK * (kD / 8); c += kThreads) {
    const int row = c / (kD / 8), col = (c % (kD / 8)) * 8;
    const int64_t s = j * kBK + row;
    const int64_t off = ((b * a.S + (s < a.S ? s : 0)) * a.G + g) * kD + col;
    cp_async_16(ks + sw128_offset(kBK, row, col), k + off, s < a.S);
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
    if (s < a.S) x0[it] = *reinterpret_cast<const uint4*>(v + ((b * a.S + s) * a.G + g) * kD + col);
    if (s + 1 < a.S)
      x1[it] = *reinterpret_cast<const uint4*>(v + ((b * a.S + s + 1) * a.G + g) * kD + col);
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

  auto load_q = [&](int u, int buf) {
    const int e0 = begin + u * rows_q;
    unsigned char* dst = qs + buf * kQTileBytes;
    for (int i = threadIdx.x; i < kTileRows * (kD / 8); i += kThreads) {
      const int R = i / (kD / 8), col = (i % (kD / 8)) * 8;
      const int e = e0 + R / r;
      const bool valid = e < end;
      const int64_t t = valid ? (entries[e] >> 5) : 0;
      cp_async_16(dst + sw128_offset(kTileRows, R, col),
                  q + ((b * a.S + t) * a.H + g * r + R % r) * static_cast<int64_t>(kD) + col,
                  valid);
    }
    cp_async_commit();
  };
  if (u_begin < u_end) load_q(u_begin, 0);
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();  // K_j, V_j^T from every thread

  const uint64_t k_desc = sw128_desc(ks), vt_desc = sw128_desc(vts);
  float sc[64], oc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) sc[i] = oc[i] = 0.0f;
  int buf = 0;
  for (int u = u_begin; u < u_end; ++u, buf ^= 1) {
    if (u != u_begin) {
      cp_async_wait<0>();
      fence_proxy_async();
      __syncthreads();  // this tile's rows from every thread; the previous tile done
    }
    if (u + 1 < u_end) load_q(u + 1, buf ^ 1);

    // S = Q K_j^T.
    const uint64_t q_desc = sw128_desc(qs + buf * kQTileBytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      // k-slice kk: 64-column tile kk / 4, 32 bytes per slice within it (descriptor units: 16 B).
      const uint64_t step = ((kk / 4) * kTileRows * 128 + (kk % 4) * 32) >> 4;
      const uint64_t kstep = ((kk / 4) * kBK * 128 + (kk % 4) * 32) >> 4;
      wgmma_m64n128k16_ss<0>(sc, q_desc + step, k_desc + kstep, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(sc);

    // This thread's rows R0 = 16 warp + grp, R1 = R0 + 8: query, slot, head.
    const int e0 = begin + u * rows_q;
    int64_t t_row[2];
    int slot_row[2], head_row[2];
    bool valid_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int R = 16 * warp + grp + 8 * h;
      const int e = e0 + R / r;
      valid_row[h] = e < end;
      const int32_t entry = valid_row[h] ? entries[e] : 0;
      t_row[h] = entry >> 5;
      slot_row[h] = entry & 31;
      head_row[h] = R % r;
    }
    // Causal mask and sequence end: only where some row of the warp needs it.
    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
      lim[h] = static_cast<int>(min(t_row[h], a.S - 1) - j * kBK);  // last attended key
    if (__any_sync(0xffffffffu, lim[0] < kBK - 1 || lim[1] < kBK - 1)) {
#pragma unroll
      for (int i = 0; i < 64; ++i)
        if ((i / 4) * 8 + 2 * tig + (i & 1) > lim[(i / 2) & 1]) sc[i] = -INFINITY;
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 64; ++i) mx[(i / 2) & 1] = fmaxf(mx[(i / 2) & 1], sc[i]);
    float sum[2] = {0.0f, 0.0f}, mxs[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      if (mx[h] == -INFINITY) mx[h] = 0.0f;  // padding rows: keep NaNs out
      mxs[h] = mx[h] * scale_log2;
    }
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const int h = (i / 2) & 1;
      sc[i] = fast_exp2(fmaf(sc[i], scale_log2, -mxs[h]));
      sum[h] += sc[i];
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
    }

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

    // Block-normalized partial output (fragment order, 16-byte stores) and the block's
    // log-sum-exp.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (!valid_row[h]) continue;
      const int64_t prow =
          (((t_row[h] - a.t0) * a.G + g) * a.K + slot_row[h]) * a.r + head_row[h];
      const float inv = 1.0f / sum[h];
      bf16* dst = part + prow * kD + tig * (kD / 4);
#pragma unroll
      for (int nt = 0; nt < kD / 8; nt += 4) {
        const float* o = oc + 4 * nt + 2 * h;
        *reinterpret_cast<uint4*>(dst + 2 * nt) =
            make_uint4(pack_bf16(o[0] * inv, o[1] * inv), pack_bf16(o[4] * inv, o[5] * inv),
                       pack_bf16(o[8] * inv, o[9] * inv), pack_bf16(o[12] * inv, o[13] * inv));
      }
      if (tig == 0) lse_part[prow] = (mxs[h] + log2f(sum[h])) * 0.69314718056f;
    }
  }
#endif
}

}  // namespace

bool wgmma_available() {
  const char* env = std::getenv("MSA_KV_OUTER_WGMMA");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  static const bool available = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cudaFuncAttributes attr{};
    // binaryVersion 90: the kernel was compiled for sm_90(a) (an sm_80-only build runs it as an
    // empty body, so never choose it there).
    if (cudaFuncGetAttributes(&attr, wgmma_forward_kernel) != cudaSuccess) return false;
    return major == 9 && minor == 0 && attr.binaryVersion == 90;
  }();
  return available;
}

int wgmma_forward_queries_per_tile(int64_t r) { return static_cast<int>(kTileRows / r); }

void launch_wgmma_forward(const bf16* q, const bf16* k, const bf16* v, const int32_t* list_start,
                          const int32_t* item_start, int64_t lists, const int32_t* entries,
                          float scale_log2, bf16* part, float* lse_part, const KvDims& a,
                          int64_t max_items) {
  static bool configured = false;
  if (!configured) {
    MSA_CUDA_CHECK(cudaFuncSetAttribute(wgmma_forward_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kSmemBytes)));
    configured = true;
  }
  wgmma_forward_kernel<<<static_cast<unsigned>(max_items), kThreads, kSmemBytes>>>(
      q, k, v, list_start, item_start, lists, entries, scale_log2, part, lse_part, a);
  MSA_CUDA_CHECK_LAUNCH("wgmma_forward_kernel");
}

}  // namespace msa::cuda::kv_outer
