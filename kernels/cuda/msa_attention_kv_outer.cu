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
// chunks, for tests), and a batch of short sequences shares launches (KvDims::nseq), so that
// they fill the GPU together. The combine also yields each block's
// attention mass exp(lse_j - lse) for the index distillation loss, without another pass.
//
// Work lists: for each (sequence, group, key block), the queries that selected the block and the
// slot they selected it in, built by a count / exclusive scan (CUB) / fill pass. Order inside a
// list does not matter to the forward (each (query, slot) owns its partial), so its result is
// deterministic; the backward sums dK/dV over a list in list order, which the atomic cursors of
// list_fill_kernel vary from run to run, so deterministic mode (core/deterministic.h) sorts each
// list (sort_work_lists) before the backward.
// Fewer queries than keys (context parallelism, KvDims): the lists, partials, lse and dQ are
// indexed by query t; K/V/dK/dV rows, the key blocks (nb over the Sk keys) and the causal limit
// by key position, query t sitting at t + q_off. Any offset works (no block alignment needed).
// This file's forward uses mma.sync (any sm_80+ GPU, head_dim 64/128, block 64/128; shared memory
// rows padded by 16 bytes so ldmatrix is conflict-free); on Hopper at head_dim 128 / block 128 the
// wgmma kernel of msa_attention_fwd_wgmma.cu replaces it (same lists, partials and combine).
#include <algorithm>
#include <cub/cub.cuh>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "core/deterministic.h"
#include "core/env_switch.h"
#include "kernels/cuda/kv_outer_common.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/msa_cuda.h"
#include "kernels/msa.h"

namespace msa::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMinTilesPerCta = 16;  // of the mma.sync forward
constexpr size_t kPartialBudgetBytes = size_t(4) << 30;
constexpr size_t kBatchedPartialBytes = size_t(1) << 30;
using kv_outer::BackwardItem;
using kv_outer::find_backward_item;
using kv_outer::find_work_item;
using kv_outer::forward_per_split;
using kv_outer::fragment_order_dim;
using kv_outer::KvDims;
using kv_outer::masked_block_softmax;
using kv_outer::WorkItem;

// ---- work lists ------------------------------------------------------------------------------

// Selection slot i of a launch (chunk queries x G x K, b-major): its sequence b, query t, slot s
// and the selection row (b S + t) G + g of the launch's sequences.
struct SlotOf {
  int64_t b, t, row;
  int64_t g;
  int s;
};
__device__ __forceinline__ SlotOf slot_of(int64_t i, const KvDims& a) {
  SlotOf x;
  x.s = static_cast<int>(i % a.K);
  const int64_t rl = i / a.K, cq = rl / a.G, rows = a.t1 - a.t0;
  x.g = rl % a.G;
  x.b = cq / rows;
  x.t = a.t0 + cq % rows;
  x.row = (x.b * a.S + x.t) * a.G + x.g;
  return x;
}

// One thread per (query row, slot) of the launch: the selection is read coalesced (a row's k
// slots are adjacent) and the atomics of a row issue in parallel (a thread per row looping over
// its slots made both kernels ~2x slower: docs/perf.md).
__global__ void list_count_kernel(const int32_t* indices, const int32_t* counts, int32_t* len,
                                  KvDims a) {
  const int64_t n = a.chunk_queries() * a.G * a.K;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const SlotOf x = slot_of(i, a);
  if (x.s >= counts[x.row]) return;
  atomicAdd(len + (x.b * a.G + x.g) * a.nb + indices[x.row * a.K + x.s], 1);
}

// Entry = (t << 5) | slot (the list says the sequence).
__global__ void list_fill_kernel(const int32_t* indices, const int32_t* counts,
                                 const int32_t* start, int32_t* cursor, int32_t* entries,
                                 KvDims a) {
  const int64_t n = a.chunk_queries() * a.G * a.K;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const SlotOf x = slot_of(i, a);
  if (x.s >= counts[x.row]) return;
  const int64_t list = (x.b * a.G + x.g) * a.nb + indices[x.row * a.K + x.s];
  const int32_t pos = start[list] + atomicAdd(cursor + list, 1);
  entries[pos] = static_cast<int32_t>((x.t << 5) | x.s);
}

// Work items of the forward: a list's query tiles are cut into pieces of per_split tiles (at
// least min_tiles, so one K/V load serves many queries; at most kSplits pieces, so the heavy
// early blocks spread over several CTAs). item_len[list] = its number of pieces.
__global__ void item_count_kernel(const int32_t* list_start, int32_t* item_len, int64_t lists,
                                  int per_cta, int min_tiles) {
  const int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (l > lists) return;
  if (l == lists) {  // the scan's last input: the total comes out at item_start[lists]
    item_len[l] = 0;
    return;
  }
  const int n_tiles = (list_start[l + 1] - list_start[l] + per_cta - 1) / per_cta;
  const int per_split = forward_per_split(n_tiles, min_tiles);
  item_len[l] = (n_tiles + per_split - 1) / per_split;
}

// item_list[i] = the list of work item i, so a CTA finds its list with one load (a binary search
// over item_start cost ~15 dependent global loads per CTA).
__global__ void item_list_kernel(const int32_t* item_start, int32_t* item_list, int64_t lists) {
  const int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (l >= lists) return;
  for (int32_t i = item_start[l]; i < item_start[l + 1]; ++i) item_list[i] = static_cast<int32_t>(l);
}

// ---- the attention kernel --------------------------------------------------------------------

// Shared memory: K_j and V_j (BK x D each) for the whole CTA, and per warp two 16-row Q tiles
// (cp.async double buffer: the next tile's rows load while the current one computes). Rows are
// padded by 16 bytes so ldmatrix is conflict-free.
template <int D, int BK>
struct Smem {
  static constexpr int kLd = D + 8;
  static constexpr size_t kKvElems = size_t(2) * BK * kLd;
  static constexpr size_t kQElems = size_t(2) * 16 * kLd;  // per warp
  static constexpr size_t kBytes = (kKvElems + kWarps * kQElems) * sizeof(bf16);
};

// grid.x >= the number of work items (item_start[lists]); CTA i works on list item_list[i].
// Partial layout: [chunk rows (b, t - t0), G, K, r, D] bf16, row prow's dims in fragment order
// (fragment_order_dim) as 16-byte chunks, chunk c stored at c ^ (prow % 8) (the wgmma kernel's
// bank-conflict-free staging, which its bulk copies carry over as is); lse_part [chunk rows, G, K,
// r] f32.
template <int D, int BK>
__global__ void __launch_bounds__(kWarps * 32)
    kv_outer_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                            const bf16* __restrict__ v, const int32_t* __restrict__ list_start,
                            const int32_t* __restrict__ item_start,
                            const int32_t* __restrict__ item_list, int64_t lists,
                            const int32_t* __restrict__ entries, float scale_log2,
                            bf16* __restrict__ part, float* __restrict__ lse_part, KvDims a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kLd = Smem<D, BK>::kLd;
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* vs = ks + BK * kLd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  bf16* qs = vs + BK * kLd + warp * Smem<D, BK>::kQElems;
  const int r = static_cast<int>(a.r);
  const int rows_q = 16 / r;  // queries per warp tile
  const int per_cta = kWarps * rows_q;
  WorkItem w;
  if (!find_work_item(static_cast<int32_t>(blockIdx.x), item_start, item_list, list_start, lists,
                      a, per_cta, kMinTilesPerCta, w))
    return;
  const int64_t j = w.j, g = w.g, b = w.b;
  const int32_t begin = w.begin, end = w.end;
  const int tile_begin = w.tile_begin, tile_end = w.tile_end;
  // Query t attends this block's keys up to min(t + q_off, Sk - 1) - j BK (32-bit: as few
  // registers as the Tq == Tk code).
  const int lim_shift = static_cast<int>(a.q_off - j * BK);
  const int lim_max = static_cast<int>(a.Sk - 1 - j * BK);

  // K_j and V_j (zeros past the last key), then this warp's first Q tile.
  for (int c = threadIdx.x; c < BK * kChunks; c += blockDim.x) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    const int64_t s = j * BK + row;
    const int64_t off = ((b * a.Sk + (s < a.Sk ? s : 0)) * a.G + g) * D + col;
    cp_async_16(ks + row * kLd + col, k + off, s < a.Sk);
    cp_async_16(vs + row * kLd + col, v + off, s < a.Sk);
  }
  cp_async_commit();
  auto load_q = [&](int tile, int buf) {
    const int e0 = begin + tile * per_cta + warp * rows_q;
    for (int i = lane; i < 16 * kChunks; i += 32) {
      const int R = i / kChunks, col = (i % kChunks) * 8;
      const int e = e0 + R / r;
      const bool valid = e < end;
      const int64_t t = valid ? (entries[e] >> 5) : 0;
      cp_async_16(qs + (buf * 16 + R) * kLd + col,
                  q + ((b * a.S + t) * a.H + g * r + R % r) * static_cast<int64_t>(D) + col, valid);
    }
    cp_async_commit();
  };
  load_q(tile_begin, 0);

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int buf = (tile - tile_begin) & 1;
    if (tile + 1 < tile_end) {
      __syncwarp();  // every lane is done reading buf ^ 1 (the previous tile)
      load_q(tile + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if (tile == tile_begin)
      __syncthreads();  // K and V from every thread
    else
      __syncwarp();
    const bf16* qt = qs + buf * 16 * kLd;
    const int e0 = begin + tile * per_cta + warp * rows_q;
    // This thread's two rows R0 = grp, R1 = grp + 8: query, slot, head.
    int64_t t_row[2];
    int slot_row[2], head_row[2];
    bool valid_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int R = grp + 8 * h;
      const int e = e0 + R / r;
      valid_row[h] = e < end;
      const int32_t entry = valid_row[h] ? entries[e] : 0;
      t_row[h] = entry >> 5;
      slot_row[h] = entry & 31;
      head_row[h] = R % r;
    }
    // S = Q K_j^T: 16 rows x BK keys; A fragments by ldmatrix from the staged tile, B fragments
    // of two key tiles per ldmatrix.x4.
    float sc[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
    for (int kstep = 0; kstep < D / 16; ++kstep) {
      uint32_t qa[4];
      ldmatrix_x4(qa, qt + ((lane % 8) + 8 * ((lane / 8) % 2)) * kLd + kstep * 16 + 8 * (lane / 16));
#pragma unroll
      for (int nt = 0; nt < BK / 8; nt += 2) {
        uint32_t b4[4];
        ldmatrix_x4(b4, ks + ((nt + lane / 16) * 8 + lane % 8) * kLd + kstep * 16 +
                            ((lane / 8) % 2) * 8);
        mma_bf16(sc[nt], qa, b4[0], b4[1]);
        mma_bf16(sc[nt + 1], qa, b4[2], b4[3]);
      }
    }
    int lim[2];  // each row's last attended key of this block
#pragma unroll
    for (int h = 0; h < 2; ++h) lim[h] = min(static_cast<int>(t_row[h]) + lim_shift, lim_max);
    float mxs[2], sum[2];
    masked_block_softmax(reinterpret_cast<float(&)[BK / 2]>(sc), lim, tig, scale_log2, mxs, sum);
    // O = P V_j, P taken from the S accumulators as A fragments (two key tiles per k-step).
    float oc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) oc[nt][0] = oc[nt][1] = oc[nt][2] = oc[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pa[4];
      c_to_a_fragment(pa, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
      for (int nt = 0; nt < D / 8; nt += 2) {
        uint32_t b4[4];
        ldmatrix_x4_trans(b4, vs + (kk * 16 + (lane % 16)) * kLd + (nt + lane / 16) * 8);
        mma_bf16(oc[nt], pa, b4[0], b4[1]);
        mma_bf16(oc[nt + 1], pa, b4[2], b4[3]);
      }
    }
    // Block-normalized partial output (fragment order, 16-byte stores) and the block's
    // log-sum-exp.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (!valid_row[h]) continue;
      const int64_t prow =
          ((a.chunk_row(b, t_row[h]) * a.G + g) * a.K + slot_row[h]) * a.r + head_row[h];
      const float inv = 1.0f / sum[h];
      // Chunk c of the row at c ^ (prow % 8), the layout of the wgmma kernel's bulk stores.
      const int key = static_cast<int>(prow & 7);
#pragma unroll
      for (int nt = 0; nt < D / 8; nt += 4)
        *reinterpret_cast<uint4*>(part + prow * D + ((((tig * (D / 4) + 2 * nt) / 8) ^ key) * 8)) =
            make_uint4(pack_bf16(oc[nt][2 * h] * inv, oc[nt][2 * h + 1] * inv),
                       pack_bf16(oc[nt + 1][2 * h] * inv, oc[nt + 1][2 * h + 1] * inv),
                       pack_bf16(oc[nt + 2][2 * h] * inv, oc[nt + 2][2 * h + 1] * inv),
                       pack_bf16(oc[nt + 3][2 * h] * inv, oc[nt + 3][2 * h + 1] * inv));
      if (tig == 0) lse_part[prow] = (mxs[h] + log2f(sum[h])) * 0.69314718056f;
    }
  }
}

// Merges each query's slots into out and lse, and writes each slot's attention mass
// exp(lse_j - lse) when asked. One thread per 16-byte piece (8 dims) of one (query, head) output
// row, consecutive threads on consecutive pieces: a (query, group)'s partials for one slot are
// one contiguous r x D run, so a warp reads 512 contiguous bytes per slot with 16-byte loads, and
// a thread keeps its slots' loads in flight together. It runs at the memory's pace: 1.27 ms for a
// 16384-query chunk at the paper's shape (4.3 GB of partials, ncu: 3.65 TB/s of DRAM), against
// 1.32 ms for the earlier warp per (query, head) with 8-byte loads. At 128K the combines are a
// quarter of the forward; only fewer partial bytes would make them cheaper (docs/perf.md: running
// them on a side stream beside the next chunk's pass, two partial buffers, was slower).
constexpr int kCombineThreads = 256;
constexpr int kCombineBatch = 8;  // slots whose loads are issued before any is used

template <int D>
__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(const bf16* __restrict__ part, const float* __restrict__ lse_part,
                   const int32_t* __restrict__ counts, bf16* __restrict__ out,
                   float* __restrict__ lse, float* __restrict__ block_mass, KvDims a) {
  constexpr int kPieces = D / 8;
  const int64_t rows = a.t1 - a.t0;
  const int64_t n = a.nseq * rows * a.H * kPieces;
  const int64_t i = blockIdx.x * static_cast<int64_t>(kCombineThreads) + threadIdx.x;
  if (i >= n) return;
  const int c = static_cast<int>(i % kPieces);
  const int64_t hh = (i / kPieces) % a.r, g = (i / (kPieces * a.r)) % a.G;
  const int64_t tt = (i / (kPieces * a.H)) % rows, b = i / (kPieces * a.H * rows);
  const int64_t t = a.t0 + tt, h = g * a.r + hh;
  const int count = counts[(b * a.S + t) * a.G + g];
  const int64_t base = (a.chunk_row(b, t) * a.G + g) * a.K;
  float m = -INFINITY;
  for (int s = 0; s < count; ++s) m = fmaxf(m, lse_part[(base + s) * a.r + hh]);
  float z = 0.0f;
  for (int s = 0; s < count; ++s) z += __expf(lse_part[(base + s) * a.r + hh] - m);
  const float row_lse = m + logf(z);
  float acc[8] = {0};
  for (int s0 = 0; s0 < count; s0 += kCombineBatch) {
    uint4 x[kCombineBatch];
#pragma unroll
    for (int j = 0; j < kCombineBatch; ++j) {
      // Slots past count re-read the last row (no branch around the loads) and weigh 0.
      const int s = min(s0 + j, count - 1);
      const int64_t prow = (base + s) * a.r + hh;
      const uint4* src =
          reinterpret_cast<const uint4*>(part + prow * D + ((c ^ static_cast<int>(prow & 7)) * 8));
      x[j] = *src;
    }
#pragma unroll
    for (int j = 0; j < kCombineBatch; ++j) {
      const float wgt =
          s0 + j < count ? __expf(lse_part[(base + s0 + j) * a.r + hh] - row_lse) : 0.0f;
      const uint32_t w4[4] = {x[j].x, x[j].y, x[j].z, x[j].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc[2 * e] += wgt * __uint_as_float(w4[e] << 16);
        acc[2 * e + 1] += wgt * __uint_as_float(w4[e] & 0xFFFF0000u);
      }
    }
  }
  bf16* o = out + ((b * a.S + t) * a.H + h) * D;
#pragma unroll
  for (int e = 0; e < 8; e += 2)
    *reinterpret_cast<uint32_t*>(o + fragment_order_dim<D>(c * 8 + e)) =
        pack_bf16(acc[e], acc[e + 1]);
  if (c == 0) {
    lse[(b * a.H + h) * a.S + t] = row_lse;
    if (block_mass != nullptr)
      for (int s = 0; s < a.K; ++s)
        block_mass[((b * a.S + t) * a.H + h) * a.K + s] =
            s < count ? __expf(lse_part[(base + s) * a.r + hh] - row_lse) : 0.0f;
  }
}

unsigned combine_grid(int64_t rows, int64_t heads, int head_dim) {
  return static_cast<unsigned>((rows * heads * (head_dim / 8) + kCombineThreads - 1) /
                               kCombineThreads);
}

// The launches of one pass (forward or backward) over a batch: nseq sequences at a time when
// whole sequences fit the budget, else one sequence in query chunks; and, per launch, its work
// lists (from the cache or built) and work items (runs of at least min_tiles tiles of
// tile_queries entries), in buffers sized once for the largest launch. With a cache,
// chunk_work_lists keeps the lists in buffers of its own, so start and entries stay unallocated.
class LaunchWork {
 public:
  LaunchWork(const cpu::MsaDims& d, SelectionCache* cache, int tile_queries, int min_tiles)
      : d_(d),
        cache_(cache),
        tile_queries_(tile_queries),
        min_tiles_(min_tiles),
        chunk_(kv_outer::query_chunk(d)),
        nseq_(kv_outer::sequences_per_launch(d)),
        max_lists_(nseq_ * d.groups * d.num_blocks()),
        len_(i32(max_lists_ + 1)),
        cursor_(i32(max_lists_)),
        start_(i32(cache != nullptr ? 1 : max_lists_ + 1)),
        entries_(i32(cache != nullptr ? 1 : max_entries())),
        item_start_(i32(max_lists_ + 1)),
        item_list_(
            i32(kv_outer::work_items_bound(max_entries(), tile_queries, min_tiles, max_lists_))),
        scan_bytes_(kv_outer::work_list_scan_bytes(max_lists_)),
        scan_tmp_(i32(static_cast<int64_t>(scan_bytes_ / 4) + 1)) {}

  int64_t chunk() const { return chunk_; }
  int64_t sequences_per_launch() const { return nseq_; }
  // Queries of the largest launch (the partial buffers' rows).
  int64_t max_queries() const { return nseq_ * chunk_; }

  // Launch (sequences [b0, b1), queries [t0, t1)).
  KvDims dims(int64_t b0, int64_t b1, int64_t t0, int64_t t1) const {
    const int64_t r = d_.heads / d_.groups;
    return KvDims{d_.seq, d_.heads, d_.groups, d_.topk,           r,      d_.num_blocks(),
                  t0,     t1,       d_.keys(), d_.query_offset(), b1 - b0};
  }

  // The launch's lists (indices / counts offset to its first sequence) and items; max_items
  // bounds the item count (the grid).
  struct Work {
    kv_outer::ChunkLists lists;
    const int32_t* item_start;
    const int32_t* item_list;
    int64_t n_lists, max_items;
  };
  Work prepare(const Tensor& indices, const Tensor& counts, const int32_t* idx, const int32_t* cnt,
               const KvDims& a, kv_outer::ListOrder order) {
    const kv_outer::ChunkLists wl =
        kv_outer::chunk_work_lists(cache_, indices, counts, idx, cnt, a, order, len_, cursor_,
                                   start_, entries_, scan_tmp_, scan_bytes_);
    // len is scratch once the lists are built.
    kv_outer::build_work_items(wl.start, a.lists(), tile_queries_, min_tiles_, len_.data<int32_t>(),
                               item_start_.data<int32_t>(), item_list_.data<int32_t>(),
                               scan_tmp_.raw_data(), scan_bytes_);
    return {wl, item_start_.data<int32_t>(), item_list_.data<int32_t>(), a.lists(),
            kv_outer::work_items_bound(a.chunk_queries() * a.G * a.K, tile_queries_, min_tiles_,
                                       a.lists())};
  }

 private:
  static Tensor i32(int64_t n) {
    return Tensor::empty({std::max<int64_t>(n, 1)}, DType::kI32, Device::kCUDA);
  }
  int64_t max_entries() const { return max_queries() * d_.groups * d_.topk; }

  const cpu::MsaDims d_;
  SelectionCache* cache_;
  const int tile_queries_, min_tiles_;
  const int64_t chunk_, nseq_, max_lists_;
  Tensor len_, cursor_, start_, entries_, item_start_, item_list_;
  const size_t scan_bytes_;
  Tensor scan_tmp_;
};

template <int D, int BK>
void run_kv_outer(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& indices,
                  const Tensor& counts, double scale, Tensor& out, Tensor& lse,
                  Tensor* block_mass, const cpu::MsaDims& d, SelectionCache* cache) {
  const int64_t r = d.heads / d.groups;
  const size_t smem = Smem<D, BK>::kBytes;
  // Per call: the attribute belongs to the current device (a host call of microseconds).
  MSA_CUDA_CHECK(cudaFuncSetAttribute(kv_outer_forward_kernel<D, BK>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const float scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  // Head dim 128 and block size 128 on Hopper: the wgmma kernel (msa_attention_fwd_wgmma.cu).
  const bool wgmma = D == 128 && BK == 128 && kv_outer::wgmma_available();
  const int per_cta =
      wgmma ? kv_outer::wgmma_forward_queries_per_tile(r) : kWarps * static_cast<int>(16 / r);
  const int min_tiles = wgmma ? kv_outer::kWgmmaMinTilesPerCta : kMinTilesPerCta;
  LaunchWork work(d, cache, per_cta, min_tiles);
  const int64_t chunk = work.chunk(), nseq = work.sequences_per_launch();
  Tensor part =
      Tensor::empty({work.max_queries() * d.groups * d.topk * r * D}, DType::kBF16, Device::kCUDA);
  Tensor lse_part =
      Tensor::empty({work.max_queries() * d.groups * d.topk * r}, DType::kF32, Device::kCUDA);
  for (int64_t b0 = 0; b0 < d.batch; b0 += nseq) {
    const int64_t b1 = std::min(d.batch, b0 + nseq);
    const Tensor qb = q.slice0(b0, b1), kb = k.slice0(b0, b1), vb = v.slice0(b0, b1);
    const int32_t* idx = indices.data<int32_t>() + b0 * d.seq * d.groups * d.topk;
    const int32_t* cnt = counts.data<int32_t>() + b0 * d.seq * d.groups;
    for (int64_t t0 = 0; t0 < d.seq; t0 += chunk) {
      const KvDims a = work.dims(b0, b1, t0, std::min(d.seq, t0 + chunk));
      // Any list order: each (query, slot) owns its partial.
      const LaunchWork::Work w =
          work.prepare(indices, counts, idx, cnt, a, kv_outer::ListOrder::kAnyOrder);
      if (wgmma) {
        kv_outer::launch_wgmma_forward(qb.data<bf16>(), kb.data<bf16>(), vb.data<bf16>(),
                                       w.lists.start, w.item_start, w.item_list, w.n_lists,
                                       w.lists.entries, scale_log2, part.data<bf16>(),
                                       lse_part.data<float>(), a, w.max_items, min_tiles);
      } else {
        kv_outer_forward_kernel<D, BK><<<static_cast<unsigned>(w.max_items), kWarps * 32, smem>>>(
            qb.data<bf16>(), kb.data<bf16>(), vb.data<bf16>(), w.lists.start, w.item_start,
            w.item_list, w.n_lists, w.lists.entries, scale_log2, part.data<bf16>(),
            lse_part.data<float>(), a);
        MSA_CUDA_CHECK_LAUNCH("kv_outer_forward_kernel");
      }
      Tensor ob = out.slice0(b0, b1), lb = lse.slice0(b0, b1);
      float* mass = block_mass != nullptr ? block_mass->slice0(b0, b1).data<float>() : nullptr;
      combine_kernel<D><<<combine_grid(a.chunk_queries(), d.heads, D), kCombineThreads>>>(
          part.data<bf16>(), lse_part.data<float>(), cnt, ob.data<bf16>(), lb.data<float>(),
          mass, a);
      MSA_CUDA_CHECK_LAUNCH("combine_kernel");
    }
  }
}

// ---- backward ----------------------------------------------------------------------------

// One CTA per work item (a run of tiles of one (key block j, group) list: long lists, the blocks
// every query selects, are split over several CTAs), BK / 16 warps, warp w owning keys
// w*16 .. w*16+15 of the block: for each tile of 32 query rows (32 / r queries x r heads) that
// selected j, with
// P = exp(scale QK^T - lse) from the forward's final lse and D = rowsum(dO * O):
//   S^T = K_w Q^T, dP^T = V_w dO^T, dS^T = P^T (dP^T - D)            (keys as mma rows)
//   dV_w += P^T dO, dK_w += dS^T Q                                   (registers, whole list)
//   dQ_tile = dS K_j, dS staged in shared memory, warp w computing D / warps of the dims
// Tiles of 32 rows (not 16) let each K/V fragment serve four mma n-tiles and halve the barriers
// per row; the next tile's Q, dO, lse and D rows are copied into a second shared buffer by
// cp.async while the current tile computes (no prefetch registers: dK/dV already hold 128).
// dK and dV of a key are owned by the one CTA of its block, unless its list is split: then its
// items add atomically (deterministic mode does not split). dQ of a (query, slot) goes to its own
// partial row, summed over slots by dq_combine_kernel. dK/dV accumulate in f32 across query
// chunks (dk_acc, dv_acc).
constexpr int kBwdRows = 32;
// Minimum tiles per backward item: a split costs a K/V load and BK x D x 2 f32 atomic adds.
constexpr int kBwdMinTiles = 8;

template <int D, int BK>
struct BwdSmem {
  static constexpr int kLd = D + 8;
  static constexpr int kLdS = BK + 8;
  static constexpr size_t kKvElems = size_t(2) * BK * kLd;
  static constexpr size_t kTileElems = size_t(2) * kBwdRows * kLd;  // Q and dO of one tile
  static constexpr size_t kBytes = (kKvElems + 2 * kTileElems + kBwdRows * kLdS) * sizeof(bf16) +
                                   size_t(2) * 3 * kBwdRows * sizeof(float);  // lse, D, limit
};

template <int D, int BK>
__global__ void __launch_bounds__(BK / 16 * 32)
    kv_outer_backward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                             const bf16* __restrict__ v, const bf16* __restrict__ dout,
                             const float* __restrict__ lse, const float* __restrict__ dsum,
                             const int32_t* __restrict__ list_start,
                             const int32_t* __restrict__ item_start,
                             const int32_t* __restrict__ item_list, int64_t lists,
                             const int32_t* __restrict__ entries, float scale,
                             bf16* __restrict__ dq_part, float* __restrict__ dk_acc,
                             float* __restrict__ dv_acc, KvDims a, int min_tiles) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using Sm = BwdSmem<D, BK>;
  constexpr int kLd = Sm::kLd, kLdS = Sm::kLdS;
  constexpr int kWarpsBwd = BK / 16, kThreads = kWarpsBwd * 32;
  constexpr int kChunks = D / 8;
  bf16* ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* vs = ks + BK * kLd;
  bf16* tiles = vs + BK * kLd;                       // [2 buffers][Q rows, dO rows]
  bf16* ds_s = tiles + 2 * Sm::kTileElems;          // dS [tile row][key]
  float* lse_s = reinterpret_cast<float*>(ds_s + kBwdRows * kLdS);  // [2][rows]
  float* dsum_s = lse_s + 2 * kBwdRows;                              // [2][rows]
  int* lim_s = reinterpret_cast<int*>(dsum_s + 2 * kBwdRows);        // [2][rows]
  const float scale_log2 = scale * 1.4426950408889634f;

  const int r = static_cast<int>(a.r), rows_q = kBwdRows / r;
  BackwardItem w;
  // Past the last item (the grid is a bound). A block no query of this chunk selected has none.
  if (!find_backward_item(blockIdx.x, item_start, item_list, list_start, lists, a, rows_q,
                          min_tiles, w))
    return;
  const int64_t g = w.g, j = w.j, b = w.b;
  const int32_t begin = w.begin, end = w.end;
  const int n_tiles = w.n_tiles;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int grp = lane >> 2, tig = lane & 3;
  const int l16 = lane % 16;
  // Sequence b of the launch: its query rows (q, dO), lse / D rows and keys.
  q += b * a.S * a.H * D;
  dout += b * a.S * a.H * D;
  lse += b * a.H * a.S;
  dsum += b * a.H * a.S;
  k += b * a.Sk * a.G * D;
  v += b * a.Sk * a.G * D;
  dk_acc += b * a.Sk * a.G * D;
  dv_acc += b * a.Sk * a.G * D;

  for (int c = threadIdx.x; c < BK * kChunks; c += kThreads) {
    const int row = c / kChunks, col = (c % kChunks) * 8;
    const int64_t s = j * BK + row;
    const int64_t off = ((s < a.Sk ? s : 0) * a.G + g) * D + col;
    cp_async_16(ks + row * kLd + col, k + off, s < a.Sk);
    cp_async_16(vs + row * kLd + col, v + off, s < a.Sk);
  }
  // A tile's rows: Q and dO (16-byte pieces), lse and D (4 bytes), and the last key of this
  // block each row attends (-1 for padding rows: nothing).
  auto load_tile = [&](int tile, int buf) {
    const int e0 = begin + tile * rows_q;
    bf16* qs = tiles + buf * Sm::kTileElems;
    bf16* dos = qs + kBwdRows * kLd;
    for (int c = threadIdx.x; c < kBwdRows * kChunks; c += kThreads) {
      const int R = c / kChunks, col = (c % kChunks) * 8;
      const int e = e0 + R / r;
      const bool valid = e < end;
      const int64_t t = valid ? (entries[e] >> 5) : 0;
      const int64_t off = (t * a.H + g * r + R % r) * D + col;
      cp_async_16(qs + R * kLd + col, q + off, valid);
      cp_async_16(dos + R * kLd + col, dout + off, valid);
    }
    if (threadIdx.x < kBwdRows) {
      const int R = threadIdx.x, e = e0 + R / r;
      const bool valid = e < end;
      const int64_t t = valid ? (entries[e] >> 5) : 0, h = g * r + R % r;
      cp_async_4(lse_s + buf * kBwdRows + R, lse + h * a.S + t, valid);
      cp_async_4(dsum_s + buf * kBwdRows + R, dsum + h * a.S + t, valid);
      lim_s[buf * kBwdRows + R] =
          valid ? static_cast<int>(min(t + a.q_off, a.Sk - 1) - j * BK) : -1;
    }
    cp_async_commit();
  };

  float dk_c[D / 8][4], dv_c[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) dk_c[nt][c] = dv_c[nt][c] = 0.0f;

  load_tile(0, 0);  // committed with K and V
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buf = tile & 1;
    if (tile + 1 < n_tiles) {
      load_tile(tile + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // this tile's rows from every thread; the previous dS fully read
    const bf16* qs = tiles + buf * Sm::kTileElems;
    const bf16* dos = qs + kBwdRows * kLd;
    const float* lse_t = lse_s + buf * kBwdRows;
    const float* dsum_t = dsum_s + buf * kBwdRows;
    const int* lim_t = lim_s + buf * kBwdRows;

    // S^T and dP^T for this warp's 16 keys x the tile's 32 rows.
    float st[4][4], dpt[4][4];
#pragma unroll
    for (int nq = 0; nq < 4; ++nq)
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
      for (int nq = 0; nq < 4; nq += 2) {
        const int brow = (nq + lane / 16) * 8 + lane % 8, bcol = kstep * 16 + ((lane / 8) % 2) * 8;
        uint32_t b4[4];
        ldmatrix_x4(b4, qs + brow * kLd + bcol);
        mma_bf16(st[nq], ka, b4[0], b4[1]);
        mma_bf16(st[nq + 1], ka, b4[2], b4[3]);
        ldmatrix_x4(b4, dos + brow * kLd + bcol);
        mma_bf16(dpt[nq], va, b4[0], b4[1]);
        mma_bf16(dpt[nq + 1], va, b4[2], b4[3]);
      }
    }
    // P^T and dS^T (C layout: row = key grp / grp+8, column = tile row nq*8 + 2 tig + {0,1}).
#pragma unroll
    for (int nq = 0; nq < 4; ++nq)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int R = nq * 8 + 2 * tig + (c & 1);
        const int key = warp * 16 + grp + 8 * (c / 2);
        const float p = key <= lim_t[R]
                            ? fast_exp2(fmaf(st[nq][c], scale_log2, -lse_t[R] * 1.4426950408889634f))
                            : 0.0f;
        st[nq][c] = p;
        dpt[nq][c] = p * (dpt[nq][c] - dsum_t[R]);
        ds_s[R * kLdS + key] = to_bf16_rn(dpt[nq][c]);
      }
    // dV_w += P^T dO, dK_w += dS^T Q (A = the keys x rows tiles as they are, 16 rows per k-step).
#pragma unroll
    for (int ks2 = 0; ks2 < 2; ++ks2) {
      uint32_t pa[4], da[4];
      c_to_a_fragment(pa, st[2 * ks2], st[2 * ks2 + 1]);
      c_to_a_fragment(da, dpt[2 * ks2], dpt[2 * ks2 + 1]);
#pragma unroll
      for (int nt = 0; nt < D / 8; nt += 2) {
        const int trow = ks2 * 16 + l16, tcol = (nt + lane / 16) * 8;
        uint32_t b4[4];
        ldmatrix_x4_trans(b4, dos + trow * kLd + tcol);
        mma_bf16(dv_c[nt], pa, b4[0], b4[1]);
        mma_bf16(dv_c[nt + 1], pa, b4[2], b4[3]);
        ldmatrix_x4_trans(b4, qs + trow * kLd + tcol);
        mma_bf16(dk_c[nt], da, b4[0], b4[1]);
        mma_bf16(dk_c[nt + 1], da, b4[2], b4[3]);
      }
    }
    __syncthreads();  // dS complete
    // dQ_tile = dS K_j: warp w computes dims [w D / warps, (w + 1) D / warps) of all 32 rows.
    constexpr int kDimsPerWarp = D / kWarpsBwd, kNt = kDimsPerWarp / 8;
    float qc[2][kNt][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) qc[mt][nt][0] = qc[mt][nt][1] = qc[mt][nt][2] = qc[mt][nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t kb[kNt][2];
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt)
        ldmatrix_x2_trans(kb[nt][0], kb[nt][1],
                          ks + (kk * 16 + l16) * kLd + warp * kDimsPerWarp + nt * 8);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        uint32_t a4[4];
        ldmatrix_x4(a4, ds_s + (mt * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * kLdS + kk * 16 +
                            8 * (lane / 16));
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt) mma_bf16(qc[mt][nt], a4, kb[nt][0], kb[nt][1]);
      }
    }
    const int e0 = begin + tile * rows_q;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int R = mt * 16 + grp + 8 * h;
        const int e = e0 + R / r;
        if (e >= end) continue;
        const int32_t entry = entries[e];
        const int64_t t = entry >> 5, slot = entry & 31;
        const int64_t prow = ((a.chunk_row(b, t) * a.G + g) * a.K + slot) * a.r + R % r;
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt)
          *reinterpret_cast<uint32_t*>(dq_part + prow * D + warp * kDimsPerWarp + nt * 8 +
                                       2 * tig) =
              pack_bf16(qc[mt][nt][2 * h] * scale, qc[mt][nt][2 * h + 1] * scale);
      }
  }
  // This warp's 16 keys: add into the f32 accumulators (atomically when the list is split over
  // several items; else this CTA is their only writer).
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t s = j * BK + warp * 16 + grp + 8 * (c / 2);
      if (s >= a.Sk) continue;
      const int64_t off = (s * a.G + g) * D + nt * 8 + 2 * tig + (c & 1);
      if (w.shared) {
        atomicAdd(dk_acc + off, dk_c[nt][c] * scale);
        atomicAdd(dv_acc + off, dv_c[nt][c]);
      } else {
        dk_acc[off] += dk_c[nt][c] * scale;
        dv_acc[off] += dv_c[nt][c];
      }
    }
}

// dq[t, h] = sum over the query's slots of its partial rows; one thread per 16-byte piece of a
// (query, head) row, the layout of combine_kernel (contiguous 512-byte warp loads per slot).
template <int D>
__global__ void __launch_bounds__(kCombineThreads)
    dq_combine_kernel(const bf16* __restrict__ part, const int32_t* __restrict__ counts,
                      bf16* __restrict__ dq, KvDims a) {
  constexpr int kPieces = D / 8;
  const int64_t rows = a.t1 - a.t0;
  const int64_t n = a.nseq * rows * a.H * kPieces;
  const int64_t i = blockIdx.x * static_cast<int64_t>(kCombineThreads) + threadIdx.x;
  if (i >= n) return;
  const int c = static_cast<int>(i % kPieces);
  const int64_t hh = (i / kPieces) % a.r, g = (i / (kPieces * a.r)) % a.G;
  const int64_t tt = (i / (kPieces * a.H)) % rows, b = i / (kPieces * a.H * rows);
  const int64_t t = a.t0 + tt, h = g * a.r + hh;
  const int count = counts[(b * a.S + t) * a.G + g];
  const int64_t base = (a.chunk_row(b, t) * a.G + g) * a.K;
  float acc[8] = {0};
  for (int s0 = 0; s0 < count; s0 += kCombineBatch) {
    uint4 x[kCombineBatch];
#pragma unroll
    for (int j = 0; j < kCombineBatch; ++j) {
      const int s = min(s0 + j, count - 1);
      x[j] = *reinterpret_cast<const uint4*>(part + ((base + s) * a.r + hh) * D + c * 8);
    }
#pragma unroll
    for (int j = 0; j < kCombineBatch; ++j) {
      if (s0 + j >= count) continue;
      const uint32_t w4[4] = {x[j].x, x[j].y, x[j].z, x[j].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc[2 * e] += __uint_as_float(w4[e] << 16);
        acc[2 * e + 1] += __uint_as_float(w4[e] & 0xFFFF0000u);
      }
    }
  }
  *reinterpret_cast<uint4*>(dq + ((b * a.S + t) * a.H + h) * D + c * 8) =
      make_uint4(pack_bf16(acc[0], acc[1]), pack_bf16(acc[2], acc[3]),
                 pack_bf16(acc[4], acc[5]), pack_bf16(acc[6], acc[7]));
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
                           Tensor& dk, Tensor& dv, const cpu::MsaDims& d, SelectionCache* cache) {
  const int64_t r = d.heads / d.groups;
  const size_t smem = BwdSmem<D, BK>::kBytes;
  // Per call: the attribute belongs to the current device (a host call of microseconds).
  MSA_CUDA_CHECK(cudaFuncSetAttribute(kv_outer_backward_kernel<D, BK>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  // Head dim 128 and block size 128 on Hopper: the wgmma kernel (msa_attention_bwd_wgmma.cu).
  const bool wgmma = D == 128 && BK == 128 && kv_outer::wgmma_available();
  // Work items: runs of tiles of one list (find_backward_item), as the forward's.
  const int per_tile =
      wgmma ? kv_outer::wgmma_backward_queries_per_tile(r) : static_cast<int>(kBwdRows / r);
  const int min_tiles = kv_outer::backward_min_tiles(
      wgmma ? kv_outer::kWgmmaBwdMinTiles : kBwdMinTiles, deterministic());
  LaunchWork work(d, cache, per_tile, min_tiles);
  const int64_t chunk = work.chunk(), nseq = work.sequences_per_launch();
  Tensor part =
      Tensor::empty({work.max_queries() * d.groups * d.topk * r * D}, DType::kBF16, Device::kCUDA);
  // Every key's gradient (zero where no query selected its block) spans the Tk keys.
  const int64_t Sk = d.keys(), kv_elems = Sk * d.groups * D;
  Tensor dk_acc = Tensor::empty({nseq * kv_elems}, DType::kF32, Device::kCUDA);
  Tensor dv_acc = Tensor::empty({nseq * kv_elems}, DType::kF32, Device::kCUDA);
  for (int64_t b0 = 0; b0 < d.batch; b0 += nseq) {
    const int64_t b1 = std::min(d.batch, b0 + nseq);
    const int32_t* idx = indices.data<int32_t>() + b0 * d.seq * d.groups * d.topk;
    const int32_t* cnt = counts.data<int32_t>() + b0 * d.seq * d.groups;
    const bf16* qb = q.data<bf16>() + b0 * d.seq * d.heads * D;
    const bf16* dob = dout.data<bf16>() + b0 * d.seq * d.heads * D;
    const bf16* kb = k.data<bf16>() + b0 * kv_elems;
    const bf16* vb = v.data<bf16>() + b0 * kv_elems;
    const float* lb = lse.data<float>() + b0 * d.heads * d.seq;
    const float* db = dsum_all.data<float>() + b0 * d.heads * d.seq;
    dk_acc.zero_();
    dv_acc.zero_();
    for (int64_t t0 = 0; t0 < d.seq; t0 += chunk) {
      const KvDims a = work.dims(b0, b1, t0, std::min(d.seq, t0 + chunk));
      // dK/dV sum a list's rows in list order: build_work_lists sorts each list (ascending
      // entry) in deterministic mode.
      const LaunchWork::Work w =
          work.prepare(indices, counts, idx, cnt, a, kv_outer::ListOrder::kSortWhenDeterministic);
      if (wgmma) {
        kv_outer::launch_wgmma_backward(qb, kb, vb, dob, lb, db, w.lists.start, w.item_start,
                                        w.item_list, w.lists.entries, static_cast<float>(scale),
                                        part.data<bf16>(), dk_acc.data<float>(),
                                        dv_acc.data<float>(), a, w.n_lists, w.max_items, min_tiles);
      } else {
        kv_outer_backward_kernel<D, BK><<<static_cast<unsigned>(w.max_items), BK / 16 * 32, smem>>>(
            qb, kb, vb, dob, lb, db, w.lists.start, w.item_start, w.item_list, w.n_lists,
            w.lists.entries, static_cast<float>(scale), part.data<bf16>(), dk_acc.data<float>(),
            dv_acc.data<float>(), a, min_tiles);
        MSA_CUDA_CHECK_LAUNCH("kv_outer_backward_kernel");
      }
      dq_combine_kernel<D><<<combine_grid(a.chunk_queries(), d.heads, D), kCombineThreads>>>(
          part.data<bf16>(), cnt, dq.data<bf16>() + b0 * d.seq * d.heads * D, a);
      MSA_CUDA_CHECK_LAUNCH("dq_combine_kernel");
    }
    const int64_t n = (b1 - b0) * kv_elems;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
    f32_to_bf16_kernel<<<blocks, 256>>>(dk_acc.data<float>(), dk.data<bf16>() + b0 * kv_elems, n);
    MSA_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
    f32_to_bf16_kernel<<<blocks, 256>>>(dv_acc.data<float>(), dv.data<bf16>() + b0 * kv_elems, n);
    MSA_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
  }
}

}  // namespace

int64_t kv_outer_sequences_per_launch(const cpu::MsaDims& d) {
  return kv_outer::sequences_per_launch(d);
}

bool kv_outer_attention_supported(const Tensor& q, const cpu::MsaDims& d) {
  if (env_is("MSA_SPARSE_ATTENTION", "reference")) return false;
  const int64_t r = d.groups > 0 ? d.heads / d.groups : 0;
  return q.dtype() == DType::kBF16 && (d.dim == 64 || d.dim == 128) &&
         (d.block_size == 64 || d.block_size == 128) && r >= 1 && 16 % r == 0 && d.topk <= 32 &&
         d.seq < (int64_t(1) << 26);
}

void kv_outer_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& indices, const Tensor& counts, double scale,
                                Tensor& out, Tensor& lse, Tensor* block_mass,
                                const cpu::MsaDims& d, SelectionCache* cache) {
  if (d.dim == 128 && d.block_size == 128)
    run_kv_outer<128, 128>(q, k, v, indices, counts, scale, out, lse, block_mass, d, cache);
  else if (d.dim == 128)
    run_kv_outer<128, 64>(q, k, v, indices, counts, scale, out, lse, block_mass, d, cache);
  else if (d.block_size == 128)
    run_kv_outer<64, 128>(q, k, v, indices, counts, scale, out, lse, block_mass, d, cache);
  else
    run_kv_outer<64, 64>(q, k, v, indices, counts, scale, out, lse, block_mass, d, cache);
}

}  // namespace msa::cuda

namespace msa::cuda {

void kv_outer_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& dsum, const Tensor& lse,
                                 const Tensor& indices, const Tensor& counts, double scale,
                                 Tensor& dq, Tensor& dk, Tensor& dv, const cpu::MsaDims& d,
                                 SelectionCache* cache) {
  if (d.dim == 128 && d.block_size == 128)
    run_kv_outer_backward<128, 128>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d,
                                    cache);
  else if (d.dim == 128)
    run_kv_outer_backward<128, 64>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d,
                                   cache);
  else if (d.block_size == 128)
    run_kv_outer_backward<64, 128>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d,
                                   cache);
  else
    run_kv_outer_backward<64, 64>(dout, q, k, v, dsum, lse, indices, counts, scale, dq, dk, dv, d,
                                  cache);
}

}  // namespace msa::cuda

// ---- work lists for other KV-outer kernels (the index distillation loss) ---------------------

namespace msa::cuda::kv_outer {

namespace {
// The partial buffer holds (launch rows x G x K x r x D) bf16.
size_t partial_bytes_per_query(const cpu::MsaDims& d) {
  return static_cast<size_t>(d.heads * d.topk * d.dim * sizeof(bf16));
}
// Queries whose partials fit the budget, a multiple of the block size.
int64_t query_budget(const cpu::MsaDims& d) {
  const int64_t BK = d.block_size;
  int64_t chunk = std::max<int64_t>(
      BK, static_cast<int64_t>(kPartialBudgetBytes / partial_bytes_per_query(d)));
  if (const auto c = env_int("MSA_KV_OUTER_CHUNK")) chunk = std::max<int64_t>(BK, *c);
  return chunk / BK * BK;
}
}  // namespace

int64_t query_chunk(const cpu::MsaDims& d) { return std::min<int64_t>(query_budget(d), d.seq); }

int64_t sequences_per_launch(const cpu::MsaDims& d) {
  if (d.seq == 0 || query_budget(d) < d.seq) return 1;
  // Launches of several sequences keep their partials and the backward's f32 dK/dV accumulators
  // under kBatchedPartialBytes: enough rows to fill the GPU, without the memory of a long
  // sequence's chunk for a batch of short ones.
  const size_t per_sequence =
      partial_bytes_per_query(d) * d.seq + size_t(2) * sizeof(float) * d.keys() * d.groups * d.dim;
  const int64_t fit = static_cast<int64_t>(kBatchedPartialBytes / per_sequence);
  return capped_sequences_per_launch(std::min<int64_t>(d.batch, fit));
}

int64_t capped_sequences_per_launch(int64_t n) {
  if (const auto c = env_int("MSA_KV_OUTER_SEQS")) n = std::min<int64_t>(n, *c);
  return std::max<int64_t>(n, 1);
}

// A cached chunk costs its rows x K x 4 bytes (the size of its part of the selection) and saves a
// count, a scan and a fill in each later pass over the same selection: the index loss, the
// recomputed forward and the backward.
ChunkLists chunk_work_lists(SelectionCache* cache, const Tensor& indices, const Tensor& counts,
                            const int32_t* idx, const int32_t* cnt, const KvDims& a,
                            ListOrder order, Tensor& len, Tensor& cursor, Tensor& start,
                            Tensor& entries, Tensor& scan_tmp, size_t scan_bytes) {
  const int64_t lists = a.lists(), rows = a.chunk_queries() * a.G;
  constexpr int64_t kWorkListsTag = 0x574c;  // "WL": the key space of these entries
  const std::vector<int64_t> key = {kWorkListsTag,
                                    reinterpret_cast<int64_t>(idx),
                                    reinterpret_cast<int64_t>(cnt),
                                    a.t0,
                                    a.t1,
                                    a.nseq,
                                    a.S,
                                    a.G,
                                    a.nb,
                                    a.K,
                                    deterministic() ? 1 : 0};
  Tensor out_start = start, out_entries = entries;
  if (cache != nullptr) {
    if (const std::vector<Tensor>* hit = cache->find(key))
      return {(*hit)[0].data<int32_t>(), (*hit)[1].data<int32_t>()};
    out_start = Tensor::empty({lists + 1}, DType::kI32, Device::kCUDA);
    out_entries = Tensor::empty({std::max<int64_t>(1, rows * a.K)}, DType::kI32, Device::kCUDA);
    order = ListOrder::kSortWhenDeterministic;  // a later backward may read them
  }
  build_work_lists(idx, cnt, a, len.data<int32_t>(), cursor.data<int32_t>(),
                   out_start.data<int32_t>(), out_entries.data<int32_t>(), scan_tmp.raw_data(),
                   scan_bytes, order);
  if (cache != nullptr) cache->put(key, {out_start, out_entries}, {indices, counts});
  return {out_start.data<int32_t>(), out_entries.data<int32_t>()};
}

size_t work_list_scan_bytes(int64_t lists) {
  size_t bytes = 0;
  MSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                               static_cast<int32_t*>(nullptr),
                                               static_cast<int>(lists + 1)));
  return bytes;
}

void build_work_lists(const int32_t* indices, const int32_t* counts, const KvDims& a, int32_t* len,
                      int32_t* cursor, int32_t* list_start, int32_t* entries, void* scan_tmp,
                      size_t scan_bytes, ListOrder order) {
  const int64_t lists = a.lists();
  const int64_t rows = a.chunk_queries() * a.G;
  MSA_CUDA_CHECK(cudaMemsetAsync(len, 0, (lists + 1) * sizeof(int32_t), nullptr));
  MSA_CUDA_CHECK(cudaMemsetAsync(cursor, 0, lists * sizeof(int32_t), nullptr));
  if (rows == 0) {
    MSA_CUDA_CHECK(cudaMemsetAsync(list_start, 0, (lists + 1) * sizeof(int32_t), nullptr));
    return;
  }
  const unsigned grid = static_cast<unsigned>((rows * a.K + 255) / 256);
  list_count_kernel<<<grid, 256>>>(indices, counts, len, a);
  MSA_CUDA_CHECK_LAUNCH("list_count_kernel");
  MSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_tmp, scan_bytes, len, list_start,
                                               static_cast<int>(lists + 1)));
  list_fill_kernel<<<grid, 256>>>(indices, counts, list_start, cursor, entries, a);
  MSA_CUDA_CHECK_LAUNCH("list_fill_kernel");
  if (deterministic() && order == ListOrder::kSortWhenDeterministic)
    sort_work_lists(entries, rows * a.K, list_start, lists);
}

void sort_work_lists(int32_t* entries, int64_t capacity, const int32_t* list_start,
                     int64_t lists) {
  if (capacity == 0 || lists == 0) return;
  const int n = static_cast<int>(capacity), segments = static_cast<int>(lists);
  size_t bytes = 0;
  MSA_CUDA_CHECK(cub::DeviceSegmentedSort::SortKeys(nullptr, bytes, entries,
                                                    static_cast<int32_t*>(nullptr), n, segments,
                                                    list_start, list_start + 1));
  // Temporaries, like the other buffers of this file (deterministic mode only).
  Tensor sorted = Tensor::empty({capacity}, DType::kI32, Device::kCUDA);
  Tensor tmp = Tensor::empty({static_cast<int64_t>(bytes / 4) + 1}, DType::kI32, Device::kCUDA);
  MSA_CUDA_CHECK(cub::DeviceSegmentedSort::SortKeys(tmp.raw_data(), bytes, entries,
                                                    sorted.data<int32_t>(), n, segments,
                                                    list_start, list_start + 1));
  // Entries outside every list are never read; copying them along is harmless.
  MSA_CUDA_CHECK(cudaMemcpyAsync(entries, sorted.raw_data(), capacity * sizeof(int32_t),
                                 cudaMemcpyDeviceToDevice, nullptr));
}

void build_work_items(const int32_t* list_start, int64_t lists, int tile_queries, int min_tiles,
                      int32_t* item_len, int32_t* item_start, int32_t* item_list, void* scan_tmp,
                      size_t scan_bytes) {
  item_count_kernel<<<static_cast<unsigned>((lists + 256) / 256), 256>>>(
      list_start, item_len, lists, tile_queries, min_tiles);
  MSA_CUDA_CHECK_LAUNCH("item_count_kernel");
  MSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_tmp, scan_bytes, item_len, item_start,
                                               static_cast<int>(lists + 1)));
  item_list_kernel<<<static_cast<unsigned>((lists + 255) / 256), 256>>>(item_start, item_list,
                                                                        lists);
  MSA_CUDA_CHECK_LAUNCH("item_list_kernel");
}

}  // namespace msa::cuda::kv_outer
