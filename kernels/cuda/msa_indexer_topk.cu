// The MSA indexer on tensor cores (DESIGN.md section 4, "GPU execution"), for bf16 index vectors
// (what training on the GPU uses): token scores iq_{t,g} . ik_s of an attention-shaped QK pass,
// max-pooled per key block in registers and fed straight into an exp-free top-k. The T x n_b block
// scores (and the T x T token scores) never reach memory. f32 inputs, other sizes and
// MSA_TOPK=reference take the CUDA-core kernel of msa_kernels.cu (the CPU's arithmetic).
//
// Rows. iq [batch, Tq, G, dI] is, per sequence, a [Tq * G, dI] matrix whose row r = t * G + g is
// one (query token, group) pair, and ik [batch, Tk, dI] is shared by every group. With fewer
// queries than keys (context parallelism), query t sits at position p = offset + t (offset =
// Tk - Tq) and every causal quantity (c = p / B, the bounds below) is formed from p. So a CTA owns
// 256 consecutive rows of that matrix (all G groups of 256 / G consecutive tokens) and every key
// tile it stages serves all of them: putting the groups of a token in one CTA is what lets the
// single index key head be loaded once per 256 rows, whatever G is, and it keeps a CTA's tokens
// close together (256 / G of them), so the causal bound of the CTA (below) wastes little.
//
// Tiles. 8 warps x 32 rows: a warp holds two m16 tiles of rows, whose A fragments (iq, bf16) sit
// in registers for the whole scan (2 x dI / 16 x 4 registers). Key tokens are staged in shared
// memory by cp.async in a 3-deep ring of kStageKeys tokens x dI (rows padded by 16 bytes:
// conflict-free ldmatrix), at most ~35 KB a stage. For each key block j (B tokens), the warp runs
// the block's B / 16 column pairs: per 16 keys, one ldmatrix.x4 per 16 of dI gives the B fragments
// of two n8 tiles, which serve both m tiles (4 mma.sync m16n8k16, f32 accumulate), so each byte
// read from shared memory feeds 32 rows. The accumulators fold into a running max per row: after
// the block a thread holds partial maxima of 4 rows (2 m tiles x rows grp, grp + 8), and a
// 3-shuffle reduce-scatter over the quad leaves thread tig with the full block maximum M_{r,j} of
// its own row (m tile tig / 2, half tig % 2).
//
// Selection. Each thread owns one row and keeps that row's best KL >= topk - 1 blocks, sorted, in
// registers (static indices: an insertion is a fixed chain of compare-and-swap selects), taken
// only when M beats the list's last entry. Only blocks j < c(t) (wholly before t) are offered, in
// ascending j, one score per (row, block) after B x dI multiply-adds per row, so insertions
// (KL (1 + ln(c / KL)) per row on random data, one per block at worst) are cheap next to the
// scoring and need no batching. Ties go to the lower block index (`better`), so the list is the
// exact top under (score descending, index ascending); with integer-valued inputs every score is
// exact and the selection equals the CPU's bit for bit. NaN block maxima count as -inf; empty
// slots hold (-inf, INT_MAX), which every real block beats, so no sentinel reaches the output.
// Raw dots are ranked: 1/sqrt(dI) cannot change the order.
//
// Causality. A warp stops at the first block its last row cannot use (c of its last token), the
// CTA stages only the blocks its last row can use, and CTAs are launched latest rows first (they
// scan the most blocks). All buffers are O(tile): nothing grows with n_b.
//
// Resources (ptxas, sm_90a): 176 registers at dI 128 / topk 16, 208 at topk 32, 80-150 for smaller
// sizes, no spills; one 256-thread CTA per SM at dI 128. mma.sync runs on sm_80 and later; on
// Hopper, d_I 128 / B 128 go to the warpgroup-MMA kernel of msa_indexer_topk_wgmma.cu (same
// block-max reduction and lists).
#include <climits>
#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "core/env_switch.h"
#include "kernels/cuda/indexer_output.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/msa_cuda.h"

namespace msa::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 32;  // two m16 tiles
constexpr int kRowsPerCta = kWarps * kRowsPerWarp;
constexpr int kStages = 3;

template <int DI>
struct IndexerTile {
  static constexpr int kLd = DI + 8;  // padded key rows (bf16 elements)
  // Key tokens per stage: 128 x dI for dI >= 64, more keys for small dI so that a stage is still
  // 128 mma per warp (~20-35 KB a stage). Every supported B (16..128) divides it.
  static constexpr int kStageKeys = DI >= 64 ? 128 : 8192 / DI;
  static constexpr size_t kStageElems = size_t(kStageKeys) * kLd;
  static constexpr size_t kSmemBytes = kStages * kStageElems * sizeof(bf16);
};

__device__ __forceinline__ bool better(float sa, int ia, float sb, int ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Puts (s, j) into the sorted list in place of its last entry, then bubbles it up.
template <int KL>
__device__ __forceinline__ void list_insert(float (&ls)[KL], int (&li)[KL], float s, int j) {
  ls[KL - 1] = s;
  li[KL - 1] = j;
#pragma unroll
  for (int p = KL - 1; p > 0; --p) {
    const bool up = better(ls[p], li[p], ls[p - 1], li[p - 1]);
    const float a = ls[p - 1], b = ls[p];
    const int ia = li[p - 1], ib = li[p];
    ls[p - 1] = up ? b : a;
    ls[p] = up ? a : b;
    li[p - 1] = up ? ib : ia;
    li[p] = up ? ia : ib;
  }
}

// rows = Tq * G (rows of one sequence), Tk keys per sequence (>= Tq), query t at position
// offset + t (offset = Tk - Tq), B the block size (16, 32, 64 or 128), K = topk.
template <int DI, int KL>
__global__ void __launch_bounds__(kWarps * 32, 1)
    indexer_topk_kernel(const bf16* __restrict__ iq, const bf16* __restrict__ ik,
                        int32_t* __restrict__ indices, int32_t* __restrict__ counts, int64_t Tq,
                        int64_t Tk, int64_t offset, int64_t G, int B, int K) {
  using Tile = IndexerTile<DI>;
  constexpr int kLd = Tile::kLd, kStageKeys = Tile::kStageKeys, kKSteps = DI / 16;
  extern __shared__ __align__(16) unsigned char indexer_smem[];
  bf16* keys_s = reinterpret_cast<bf16*>(indexer_smem);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane >> 2, tig = lane & 3;
  const int64_t b = blockIdx.y, rows = Tq * G;
  // Latest rows first: they scan the most blocks.
  const int64_t r_cta = (gridDim.x - 1 - static_cast<int64_t>(blockIdx.x)) * kRowsPerCta;
  const int64_t r_warp = r_cta + warp * kRowsPerWarp;
  const bf16* iq_b = iq + b * rows * DI;
  const bf16* ik_b = ik + b * Tk * DI;

  // A fragments of the warp's two m tiles: rows r_warp + 16 m + grp (+ 8).
  uint32_t qa[2][kKSteps][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r_warp + 16 * m + 8 * h + grp;
      const bool valid = r < rows;
      const bf16* qrow = iq_b + (valid ? r : 0) * DI;
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        qa[m][ks][h] = valid ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + 2 * tig) : 0u;
        qa[m][ks][2 + h] =
            valid ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + 8 + 2 * tig) : 0u;
      }
    }

  // The row this thread selects for: m tile tig / 2, half tig % 2. c_row = 0 (no candidates) for
  // rows past the end.
  const int64_t my_r = r_warp + 16 * (tig >> 1) + 8 * (tig & 1) + grp;
  const bool my_valid = my_r < rows;
  const int c_row = my_valid ? static_cast<int>((offset + my_r / G) / B) : 0;
  // Blocks any row of the warp (CTA) can select: j < c of its last row (at position offset + its
  // token). K == 1 selects only c(t).
  auto c_of_last = [&](int64_t r_first, int n) -> int64_t {
    if (K <= 1 || r_first >= rows) return 0;
    return (offset + min(rows - 1, r_first + n - 1) / G) / B;
  };
  const int64_t c_warp = c_of_last(r_warp, kRowsPerWarp);
  const int64_t key_end = c_of_last(r_cta, kRowsPerCta) * B;  // keys the CTA stages (<= Tk)
  const int64_t n_stages = (key_end + kStageKeys - 1) / kStageKeys;

  float ls[KL];
  int li[KL];
#pragma unroll
  for (int p = 0; p < KL; ++p) {
    ls[p] = -INFINITY;
    li[p] = INT_MAX;
  }

  auto stage = [&](int64_t st) {
    bf16* dst = keys_s + (st % kStages) * Tile::kStageElems;
    const int64_t s0 = st * kStageKeys;
    const int n_pieces =
        static_cast<int>(min(static_cast<int64_t>(kStageKeys), key_end - s0)) * (DI / 8);
    for (int i = threadIdx.x; i < n_pieces; i += blockDim.x) {
      const int key = i / (DI / 8), col = (i % (DI / 8)) * 8;
      cp_async_16(dst + key * kLd + col, ik_b + (s0 + key) * DI + col, true);
    }
  };

  // ldmatrix.x4 rows: lanes 0-7 / 8-15 / 16-23 / 24-31 address keys 0-7 (dims 0-7), keys 0-7
  // (dims 8-15), keys 8-15 (dims 0-7), keys 8-15 (dims 8-15) of a 16-key x 16-dim piece: the b0, b1
  // fragments of n tile 0, then of n tile 1.
  const int lane_off = ((lane >> 4) * 8 + (lane & 7)) * kLd + ((lane >> 3) & 1) * 8;
  const int blocks_per_stage = kStageKeys / B;

#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_stages) stage(st);
    cp_async_commit();
  }
  for (int64_t st = 0; st < n_stages; ++st) {
    cp_async_wait<kStages - 2>();  // this thread's copies of stage st have landed
    __syncthreads();               // everyone's have; stage st - 1's buffer is free again
    if (st + kStages - 1 < n_stages) stage(st + kStages - 1);
    cp_async_commit();
    const bf16* buf = keys_s + (st % kStages) * Tile::kStageElems;
    const int64_t j0 = st * blocks_per_stage;
    for (int jb = 0; jb < blocks_per_stage; ++jb) {
      const int64_t j = j0 + jb;
      if (j >= c_warp) break;                                             // warp-uniform
      float mx[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};  // [m tile][half]
      const bf16* kb = buf + jb * B * kLd + lane_off;
#pragma unroll 2
      for (int np = 0; np < B / 16; ++np) {
        // All B fragments of these 16 keys first (ldmatrix latency off the mma chain).
        uint32_t bfr[kKSteps][4];
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) ldmatrix_x4(bfr[ks], kb + np * 16 * kLd + ks * 16);
        float acc[2][2][4] = {};  // [m tile][n tile][fragment]
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks)
#pragma unroll
          for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int m = 0; m < 2; ++m)
              mma_bf16(acc[m][n], qa[m][ks], bfr[ks][2 * n], bfr[ks][2 * n + 1]);
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            mx[m][0] = fmaxf(mx[m][0], fmaxf(acc[m][n][0], acc[m][n][1]));
            mx[m][1] = fmaxf(mx[m][1], fmaxf(acc[m][n][2], acc[m][n][3]));
          }
      }
      // Reduce-scatter the 4 rows' maxima over the quad: after the xor-2 exchange a thread holds
      // its m tile (tig / 2) over 2 threads, after the xor-1 exchange its half (tig % 2) over 4.
      const bool hi_m = (tig & 2) != 0, hi_h = (tig & 1) != 0;
      float k0 = hi_m ? mx[1][0] : mx[0][0], k1 = hi_m ? mx[1][1] : mx[0][1];
      const float send0 = hi_m ? mx[0][0] : mx[1][0], send1 = hi_m ? mx[0][1] : mx[1][1];
      k0 = fmaxf(k0, __shfl_xor_sync(0xffffffffu, send0, 2));
      k1 = fmaxf(k1, __shfl_xor_sync(0xffffffffu, send1, 2));
      float score = hi_h ? k1 : k0;
      score = fmaxf(score, __shfl_xor_sync(0xffffffffu, hi_h ? k0 : k1, 1));
      score = score != score ? -INFINITY : score;  // only when every dot of the block is NaN
      const int ji = static_cast<int>(j);
      if (ji < c_row && better(score, ji, ls[KL - 1], li[KL - 1]))
        list_insert<KL>(ls, li, score, ji);
    }
  }
  cp_async_wait<0>();  // (only empty groups can be outstanding here)

  if (!my_valid) return;
  const int64_t row = b * rows + my_r;
  write_selection_row<KL>(li, min(K - 1, c_row), c_row, K, indices + row * K, counts + row);
}

template <int DI>
void launch_indexer(const Tensor& iq, const Tensor& ik, Tensor& indices, Tensor& counts,
                    const cpu::MsaDims& d) {
  const int64_t rows = d.seq * d.groups;
  const dim3 grid(static_cast<unsigned>((rows + kRowsPerCta - 1) / kRowsPerCta),
                  static_cast<unsigned>(d.batch));
  auto go = [&](auto kernel) {
    constexpr size_t smem = IndexerTile<DI>::kSmemBytes;
    // Per call: the attribute belongs to the current device (a host call of microseconds).
    MSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    kernel<<<grid, kWarps * 32, smem>>>(iq.data<bf16>(), ik.data<bf16>(), indices.data<int32_t>(),
                                        counts.data<int32_t>(), d.seq, d.keys(), d.query_offset(),
                                        d.groups, static_cast<int>(d.block_size),
                                        static_cast<int>(d.topk));
    MSA_CUDA_CHECK_LAUNCH("indexer_topk_kernel");
  };
  // The list holds the best KL >= topk - 1 blocks (a few lengths, to keep the insertion chain
  // and the registers near what topk needs).
  if (d.topk <= 4)
    go(indexer_topk_kernel<DI, 3>);
  else if (d.topk <= 8)
    go(indexer_topk_kernel<DI, 7>);
  else if (d.topk <= 16)
    go(indexer_topk_kernel<DI, 15>);
  else
    go(indexer_topk_kernel<DI, 31>);
}

}  // namespace

bool indexer_topk_mma_supported(const Tensor& iq, const Tensor& ik, const cpu::MsaDims& d) {
  if (env_is("MSA_TOPK", "reference")) return false;
  const auto pow2_in = [](int64_t x, int64_t lo, int64_t hi) {
    return x >= lo && x <= hi && (x & (x - 1)) == 0;
  };
  // 16-byte cp.async of ik rows, 4-byte loads of iq pairs.
  const bool aligned = reinterpret_cast<uintptr_t>(ik.raw_data()) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(iq.raw_data()) % 4 == 0;
  return iq.dtype() == DType::kBF16 && ik.dtype() == DType::kBF16 && aligned && d.topk >= 1 &&
         d.topk <= 32 && pow2_in(d.index_dim, 16, 128) && pow2_in(d.block_size, 16, 128);
}

// The Hopper version for d_I 128 / B 128 (msa_indexer_topk_wgmma.cu): same contract and output;
// taken when the device runs sm_90a code, unless MSA_INDEXER_WGMMA=0.
bool indexer_topk_wgmma_supported(const Tensor& iq, const Tensor& ik, const cpu::MsaDims& d);
void indexer_topk_wgmma(const Tensor& iq, const Tensor& ik, Tensor& indices, Tensor& counts,
                        const cpu::MsaDims& d);

void indexer_topk_mma(const Tensor& iq, const Tensor& ik, Tensor& indices, Tensor& counts,
                      const cpu::MsaDims& d) {
  if (d.batch == 0 || d.seq == 0 || d.groups == 0) return;
  if (indexer_topk_wgmma_supported(iq, ik, d))
    return indexer_topk_wgmma(iq, ik, indices, counts, d);
  switch (d.index_dim) {
    case 16:
      return launch_indexer<16>(iq, ik, indices, counts, d);
    case 32:
      return launch_indexer<32>(iq, ik, indices, counts, d);
    case 64:
      return launch_indexer<64>(iq, ik, indices, counts, d);
    default:
      return launch_indexer<128>(iq, ik, indices, counts, d);
  }
}

}  // namespace msa::cuda
