// The MSA indexer on Hopper warpgroup MMAs (wgmma, sm_90a) for the product shape: bf16, d_I 128,
// block size B 128, topk <= 32. Same contract, row order and output as the mma.sync kernel of
// msa_indexer_topk.cu (read its top comment first): token scores iq_{t,g} . ik_s, max-pooled per
// key block, fed straight into a per-row exp-free top-k; no score reaches memory. That file's host
// function routes these sizes here when the device runs this binary's sm_90a code (a probe,
// sm90a_code_available) and MSA_INDEXER_WGMMA is not "0".
//
// Why wgmma: the mma.sync kernel moves every key tile through ldmatrix into registers once per 32
// rows and issues one mma.sync per 16 x 8 x 16 product; a wgmma m64n128k16 reads its operands from
// shared memory itself, 64 rows at a time, 16 times the work per instruction, so the issue slots
// are left to the row maxima and the top-k lists.
//
// Rows and CTA. Rows r = t * G + g of one sequence (Tq queries; with Tk > Tq keys query t sits at
// position offset + t, offset = Tk - Tq, and c(t), the CTA's bound, come from that position; ik
// holds Tk keys per sequence), 256 consecutive rows per CTA (all groups of
// 256 / G consecutive tokens share every staged key tile, as in msa_indexer_topk.cu). The CTA is
// two consumer warpgroups (256 threads, no producer warp); warpgroup w owns rows 128 w .. 128 w +
// 127 as two m64 tiles (m = 0, 1). CTAs run latest rows first (they scan the most blocks); the
// grid is CTA-major, batch-minor, so every sequence's heaviest CTAs start first.
//
// Operand homes (shared memory, all in the 128-byte-swizzled K-major layout of wgmma_sm90.cuh,
// 1024-byte aligned; 225 KB, one CTA per SM):
//   iq   [256 rows x 128 dI]  64 KB, four m64 tiles (warpgroup w, tile m at 16 KB (2 w + m)), each
//                            two 64-column halves; loaded once by cp.async, kept for the whole scan
//   ik   5-stage ring of [128 keys x 128 dI] 32 KB tiles, key block j in slot j % 5, cp.async,
//        three blocks ahead (every thread copies 8 x 16 bytes of each tile)
//   S    registers: per warpgroup and block, two f32 accumulator sets acc0/acc1 [64 rows x 128
//        keys] (64 registers each), S_m = iq_m . ik_j^T by 8 wgmma m64n128k16, one per 16 of dI,
//        A and B from shared memory; k-slice kk is 32 (kk % 4) bytes along the 128-byte rows of
//        64-column half kk / 4 (8 KB into an m tile, 16 KB into a key tile): the descriptors of
//        msa_attention_fwd_wgmma.cu's S = Q K^T, with d_I in place of d.
//
// Loop, per key block j (CTA-uniform, j < c of the CTA's last row; a warpgroup also scores the
// blocks its own rows cannot use, at most about one, to keep the loop free of branches). On entry
// tile j has landed and every thread has passed a barrier since; acc1 holds block j - 1's S_1:
//   issue S_0 (8 MMAs, commit)                                 -- tensor cores busy from here
//   block j - 1: row maxima of acc1, quad reduce-scatter, top-k insertion  -- overlaps S_0
//   issue S_1 (8 MMAs, commit); cp.async tile j + 3 into slot (j + 3) % 5, which held block
//   j - 2 (every thread waited its MMAs before the last barrier)
//   wait S_0, row maxima of S_0                                -- overlaps S_1
//   wait for tile j + 1 (cp.async.wait_group, proxy fence, __syncthreads)  -- overlaps S_1
//   wait S_1
// So the tensor cores idle only between S_1's end and the next S_0's issue (before: for the last
// row-max pass and the barrier too; 664 -> 750 TF/s at 128K). No MMA is in flight across the
// loop edge or a branch (ptxas serializes wgmma pipelines there: warnings C7514 / C7518), so
// block 0, with no block j - 1, is a peeled copy of the body.
//
// Selection. Accumulator element i of a thread (lane = 4 grp + tig, warp w of its warpgroup) is
// row 16 w + grp + 8 ((i / 2) & 1) of its m tile, column 8 (i / 4) + 2 tig + (i & 1): a thread
// holds partial maxima of 4 rows (2 m tiles x 2 halves), and the quad's 3-shuffle reduce-scatter
// of msa_indexer_topk.cu leaves thread tig with the full block maximum of one row: m tile tig / 2,
// half tig % 2, i.e. warpgroup row 64 (tig / 2) + 16 w + 8 (tig % 2) + grp. So each thread owns one
// row and its sorted list of the best KL >= topk - 1 blocks (registers, static indices). Blocks
// are offered in ascending j, so "ties to the lower index" is "a new block must beat an entry
// strictly": scores become order-preserving int32 keys (NaN -> -inf, -0 -> +0; empty slots
// INT_MIN, below every real score, -inf included) and an insertion is KL independent compares plus
// selects (no dependent chain), run for every block (predicated: no branch among the MMAs; a block
// a row cannot use, j >= c(t), is offered as INT_MIN, which changes nothing). The list equals the
// mma.sync kernel's (score descending, index ascending), so integer-valued inputs give the CPU's
// selection bit for bit. Output exactly as there: ascending block indices, the local block c(t)
// last, -1 padding, counts = min(k, c(t) + 1).
//
// Resources (ptxas, sm_90a, CUDA 13.0): 176 / 184 / 202 / 232 registers for lists of 3 / 7 / 15 /
// 31 (topk <= 4 / 8 / 16 / 32), no spills, no stack; 225 KB of shared memory; no wgmma
// serialization warnings.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/bf16.h"
#include "core/check.h"
#include "core/cuda/cuda_check.h"
#include "core/env_switch.h"
#include "kernels/cuda/indexer_output.cuh"
#include "kernels/cuda/kernel_dispatch.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/msa_cuda.h"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace msa::cuda {
namespace {

constexpr int kDI = 128, kB = 128;
constexpr int kThreads = 256;  // two consumer warpgroups
constexpr int kRowsPerWg = 128;
constexpr int kRowsPerCta = 2 * kRowsPerWg;
constexpr int kStages = 5;  // key tile ring
constexpr int kAhead = 3;   // blocks loaded ahead: slot (j + 3) % 5 held block j - 2
constexpr uint32_t kMTileBytes = 64 * kDI * 2;        // one m64 tile of iq: 16 KB
constexpr uint32_t kIqBytes = kRowsPerCta * kDI * 2;  // 64 KB
constexpr uint32_t kKeyTileBytes = kB * kDI * 2;      // 32 KB
constexpr size_t kSmemBytes = kIqBytes + kStages * kKeyTileBytes + 1024;  // + alignment slack
static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");

// Order-preserving int32 key of a block score: a > b as floats iff key(a) > key(b); NaN counts as
// -inf and -0 as +0 (equal floats, equal keys). Every key is above INT_MIN (the empty slot).
__device__ __forceinline__ int32_t order_key(float s) {
  s = s != s ? -INFINITY : __fadd_rn(s, 0.0f);
  const int32_t bits = __float_as_int(s);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

// Offers block j (larger than every block already offered) with key `key` to the sorted list
// (best first); INT_MIN offers nothing. Entry p moves down one place when the key beats entry
// p - 1, takes the new block when it beats p but not p - 1, else stays.
template <int KL>
__device__ __forceinline__ void list_offer(int32_t (&lk)[KL], int32_t (&li)[KL], int32_t key,
                                           int32_t j) {
  bool beats[KL];
#pragma unroll
  for (int p = 0; p < KL; ++p) beats[p] = key > lk[p];
#pragma unroll
  for (int p = KL - 1; p > 0; --p) {
    lk[p] = beats[p - 1] ? lk[p - 1] : (beats[p] ? key : lk[p]);
    li[p] = beats[p - 1] ? li[p - 1] : (beats[p] ? j : li[p]);
  }
  lk[0] = beats[0] ? key : lk[0];
  li[0] = beats[0] ? j : li[0];
}

// The two row maxima (halves h = 0, 1: rows grp, grp + 8 of the warp's 16) of one accumulator set,
// over this thread's 32 columns, as a tree (short dependency chains). fmaxf drops NaNs: a NaN only
// comes out when every dot is NaN.
__device__ __forceinline__ void row_max(const float (&acc)[64], float (&mx)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float t[16];
#pragma unroll
    for (int q = 0; q < 16; ++q) t[q] = fmaxf(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
#pragma unroll
    for (int q = 0; q < 8; ++q) t[q] = fmaxf(t[q], t[q + 8]);
#pragma unroll
    for (int q = 0; q < 4; ++q) t[q] = fmaxf(t[q], t[q + 4]);
    mx[h] = fmaxf(fmaxf(t[0], t[2]), fmaxf(t[1], t[3]));
  }
}

// rows = Tq * G; Tk keys per sequence; query t at position offset + t (offset = Tk - Tq); grid =
// n_ctas x batch CTAs, CTA-major. KL = list length >= K - 1.
template <int KL>
__global__ void __launch_bounds__(kThreads, 1)
    indexer_topk_wgmma_kernel(const bf16* __restrict__ iq, const bf16* __restrict__ ik,
                              int32_t* __restrict__ indices, int32_t* __restrict__ counts,
                              int64_t Tq, int64_t Tk, int64_t offset, int64_t G, int K,
                              int n_ctas) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = sw128_align(smem_raw);
  unsigned char* iq_s = smem;
  unsigned char* keys_s = smem + kIqBytes;

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  const int batch = static_cast<int>(gridDim.x) / n_ctas;
  const int64_t b = blockIdx.x % batch;
  const int64_t r_cta = static_cast<int64_t>(n_ctas - 1 - static_cast<int>(blockIdx.x) / batch) *
                        kRowsPerCta;  // latest rows first
  const int64_t rows = Tq * G;
  const bf16* iq_b = iq + b * rows * kDI;
  const bf16* ik_b = ik + b * Tk * kDI;

  // This thread's row (see the top comment); c_row = 0 (nothing to select) past the end.
  const int64_t my_r = r_cta + kRowsPerWg * wg + 64 * (tig >> 1) + 16 * warp + 8 * (tig & 1) + grp;
  const bool my_valid = my_r < rows;
  const int c_row = my_valid ? static_cast<int>((offset + my_r / G) / kB) : 0;
  // Blocks the CTA scans: j < c of its last row, at position offset + its token (K == 1 selects
  // only c(t)).
  const int n_blocks =
      K <= 1 ? 0 : static_cast<int>((offset + min(rows - 1, r_cta + kRowsPerCta - 1) / G) / kB);

  // Copy pieces of 16 bytes: piece p = threadIdx.x + kThreads it is row p / 16, column 8 (p % 16).
  // A thread's rows are threadIdx.x / 16 + 16 it: one swizzle phase (row % 8), 2 KB apart.
  const int row0 = threadIdx.x / 16, col0 = (threadIdx.x % 16) * 8;
  // iq: 256 rows (zeros past the end), m tile it / 4, tile row row0 + 16 (it % 4).
#pragma unroll
  for (int it = 0; it < kRowsPerCta / 16; ++it) {
    const int64_t r = r_cta + row0 + 16 * it;
    const bool valid = r < rows;
    cp_async_16(iq_s + (it / 4) * kMTileBytes + sw128_offset(64, row0 + 16 * (it % 4), col0),
                iq_b + (valid ? r : 0) * kDI + col0, valid);
  }
  cp_async_commit();
  // ik block j into its ring slot; zeros (no reads) past the last block, so the loop stays free
  // of branches (the slot written is free either way).
  const uint32_t key_off = sw128_offset(kB, row0, col0);
  auto load_block = [&](int j) {
    const bool valid = j < n_blocks;
    unsigned char* dst = keys_s + (j % kStages) * kKeyTileBytes + key_off;
    const bf16* src = ik_b + (valid ? static_cast<int64_t>(j) * kB + row0 : 0) * kDI + col0;
#pragma unroll
    for (int it = 0; it < kB / 16; ++it)
      cp_async_16(dst + it * 16 * 128, src + (valid ? it * 16 * kDI : 0), valid);
    cp_async_commit();
  };

  int32_t lk[KL], li[KL];
#pragma unroll
  for (int p = 0; p < KL; ++p) {
    lk[p] = INT_MIN;
    li[p] = INT_MAX;
  }
  // Row maxima of the previous block [m tile][half] over this thread's columns, and its index
  // (-1: none yet).
  float pend[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};
  int pend_j = -1;
  // Reduce-scatter the 4 rows' maxima over the quad: after the xor-2 exchange a thread holds its
  // m tile (tig / 2) over 2 threads, after the xor-1 exchange its half (tig % 2) over 4. Then the
  // row's key goes to its list.
  auto offer_pending = [&]() {
    const bool hi_m = (tig & 2) != 0, hi_h = (tig & 1) != 0;
    float k0 = hi_m ? pend[1][0] : pend[0][0], k1 = hi_m ? pend[1][1] : pend[0][1];
    const float send0 = hi_m ? pend[0][0] : pend[1][0], send1 = hi_m ? pend[0][1] : pend[1][1];
    k0 = fmaxf(k0, __shfl_xor_sync(0xffffffffu, send0, 2));
    k1 = fmaxf(k1, __shfl_xor_sync(0xffffffffu, send1, 2));
    float score = hi_h ? k1 : k0;
    score = fmaxf(score, __shfl_xor_sync(0xffffffffu, hi_h ? k0 : k1, 1));
    const bool take = pend_j >= 0 && pend_j < c_row;
    list_offer<KL>(lk, li, take ? order_key(score) : INT_MIN, pend_j);
  };

  float acc0[64], acc1[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc0[i] = acc1[i] = 0.0f;
  const uint64_t a_desc0 = sw128_desc(iq_s + (2 * wg) * kMTileBytes);
  const uint64_t a_desc1 = sw128_desc(iq_s + (2 * wg + 1) * kMTileBytes);

#pragma unroll
  for (int j = 0; j < kAhead; ++j) load_block(j);
  // Waits until the next block's tile (block 0's and iq first, here; then block j + 1's, in
  // iteration j) has landed from every thread's copies.
  auto tile_ready = [&]() {
    cp_async_wait<kAhead - 1>();  // this thread's copies (and iq's) have landed
    fence_proxy_async();          // ... visible to the tensor cores
    __syncthreads();              // everyone's
  };
  // One iteration: S_0 of block j, block j - 1's S_1 row maxima and list offers (when `carried`,
  // i.e. not for block 0) while it runs, S_1 of block j, S_0's row maxima and the barrier for
  // block j + 1 while that runs. No MMA is in flight across the loop edge.
  auto step = [&](int j, auto carried) {
    const uint64_t b_desc = sw128_desc(keys_s + (j % kStages) * kKeyTileBytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kDI / 16; ++kk) {
      // k-slice kk: 64-column half kk / 4, 32 bytes per slice within it (descriptor units: 16 B).
      const uint64_t a_step = ((kk / 4) * 64 * 128 + (kk % 4) * 32) >> 4;
      const uint64_t b_step = ((kk / 4) * kB * 128 + (kk % 4) * 32) >> 4;
      wgmma_m64n128k16_ss<0>(acc0, a_desc0 + a_step, b_desc + b_step, kk > 0);
    }
    wgmma_commit();
    if constexpr (decltype(carried)::value) {
      row_max(acc1, pend[1]);  // S_1 of block j - 1 (waited at the end of the last iteration)
      offer_pending();         // block j - 1
      wgmma_fence();           // acc1 was read after the fence above
    }
#pragma unroll
    for (int kk = 0; kk < kDI / 16; ++kk) {
      const uint64_t a_step = ((kk / 4) * 64 * 128 + (kk % 4) * 32) >> 4;
      const uint64_t b_step = ((kk / 4) * kB * 128 + (kk % 4) * 32) >> 4;
      wgmma_m64n128k16_ss<0>(acc1, a_desc1 + a_step, b_desc + b_step, kk > 0);
    }
    wgmma_commit();
    load_block(j + kAhead);  // slot (j - 2) % kStages: every thread waited block j - 2's MMAs
    wgmma_wait<1>();
    fence_operands(acc0);
    row_max(acc0, pend[0]);
    pend_j = j;
    tile_ready();  // block j + 1, while S_1 runs
    wgmma_wait<0>();
    fence_operands(acc1);
  };
  tile_ready();
  if (n_blocks > 0) step(0, std::false_type{});
  for (int j = 1; j < n_blocks; ++j) step(j, std::true_type{});
  row_max(acc1, pend[1]);
  cp_async_wait<0>();  // (only zero-fill copies can be outstanding here)
  offer_pending();     // the last block

  if (!my_valid) return;
  const int64_t row = b * rows + my_r;
  write_selection_row<KL>(li, min(K - 1, c_row), c_row, K, indices + row * K, counts + row);
#else
  __trap();  // never chosen without sm_90a code (sm90a_code_available)
#endif
}

}  // namespace

// bf16, d_I 128, B 128, topk <= 32, 16-byte aligned iq and ik (cp.async of whole rows), on a
// device running sm_90a code; MSA_INDEXER_WGMMA=0 turns it off (the mma.sync kernel then runs).
bool indexer_topk_wgmma_supported(const Tensor& iq, const Tensor& ik, const cpu::MsaDims& d) {
  if (env_is("MSA_INDEXER_WGMMA", "0", {"1"})) return false;
  const bool aligned = reinterpret_cast<uintptr_t>(ik.raw_data()) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(iq.raw_data()) % 16 == 0;
  return iq.dtype() == DType::kBF16 && ik.dtype() == DType::kBF16 && aligned &&
         d.index_dim == kDI && d.block_size == kB && d.topk >= 1 && d.topk <= 32 &&
         sm90a_code_available();
}

void indexer_topk_wgmma(const Tensor& iq, const Tensor& ik, Tensor& indices, Tensor& counts,
                        const cpu::MsaDims& d) {
  if (d.batch == 0 || d.seq == 0 || d.groups == 0) return;
  const int64_t rows = d.seq * d.groups;
  const int64_t n_ctas = (rows + kRowsPerCta - 1) / kRowsPerCta;
  MSA_CHECK(n_ctas * d.batch < INT_MAX, "msa_index_topk (wgmma): %lld x %lld CTAs",
            static_cast<long long>(n_ctas), static_cast<long long>(d.batch));
  const dim3 grid(static_cast<unsigned>(n_ctas * d.batch));
  auto go = [&](auto kernel) {
    // Per call: the attribute belongs to the current device (a host call of microseconds).
    MSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kSmemBytes)));
    kernel<<<grid, kThreads, kSmemBytes>>>(
        iq.data<bf16>(), ik.data<bf16>(), indices.data<int32_t>(), counts.data<int32_t>(), d.seq,
        d.keys(), d.query_offset(), d.groups, static_cast<int>(d.topk), static_cast<int>(n_ctas));
    MSA_CUDA_CHECK_LAUNCH("indexer_topk_wgmma_kernel");
  };
  // The list holds the best KL >= topk - 1 blocks (the mma.sync kernel's lengths).
  if (d.topk <= 4)
    go(indexer_topk_wgmma_kernel<3>);
  else if (d.topk <= 8)
    go(indexer_topk_wgmma_kernel<7>);
  else if (d.topk <= 16)
    go(indexer_topk_wgmma_kernel<15>);
  else
    go(indexer_topk_wgmma_kernel<31>);
}

}  // namespace msa::cuda
