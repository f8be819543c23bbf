// Pieces shared by the KV-outer sparse-attention kernels (msa_attention_kv_outer.cu: work lists,
// the mma.sync forward, combine, backward; msa_attention_fwd_wgmma.cu / _bwd_wgmma.cu: sm_90a).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/bf16.h"
#include "core/tensor.h"
#include "kernels/cpu/msa.h"
#include "kernels/cuda/mma_sm80.cuh"

namespace msa {
class SelectionCache;  // kernels/msa.h
}  // namespace msa

namespace msa::cuda::kv_outer {

// S counts queries (the rows of q, the selection, lse, the work-list entries' t); Sk counts keys
// (the rows of k, v, dk, dv; nb = ceil(Sk / B)). Query t sits at key position t + q_off
// (bottom-right aligned, q_off = Sk - S): causal masks compare key positions with t + q_off.
// The work-list builders read neither Sk nor q_off (the index loss's initializers in
// msa_index_loss_cuda.cu leave them 0); the attention kernels set and read both.
// A launch covers query chunk [t0, t1) of nseq consecutive sequences (its pointers offset to the
// first): several sequences share one launch only when each is one whole chunk (t0 = 0, t1 = S),
// so short sequences fill the GPU together. List (b, g, j) = (b G + g) nb + j of the launch's
// sequence b; chunk rows (the partials') are (b, t - t0), b-major.
struct KvDims {
  int64_t S, H, G, K, r;
  int64_t nb;
  int64_t t0, t1;  // query chunk
  int64_t Sk = 0;  // key tokens (>= S)
  int64_t q_off = 0;  // position of query 0: Sk - S
  int64_t nseq = 1;   // sequences of this launch
  __host__ __device__ int64_t lists() const { return nseq * G * nb; }
  __host__ __device__ int64_t chunk_queries() const { return nseq * (t1 - t0); }
  __host__ __device__ int64_t chunk_row(int64_t b, int64_t t) const {
    return b * (t1 - t0) + t - t0;
  }
};

// A list's query tiles are shared by up to kSplits CTAs, each taking at least min_tiles
// consecutive tiles so the K/V load into shared memory is amortized; long lists (the early
// blocks, selected by many queries) spread over more CTAs (docs/perf.md has the measurements).
constexpr int kSplits = 16;

__host__ __device__ __forceinline__ int forward_per_split(int n_tiles, int min_tiles) {
  const int even = (n_tiles + kSplits - 1) / kSplits;
  return even > min_tiles ? even : min_tiles;
}

// A forward work item: a piece of one list (key block j of group g, sequence b; its entries
// [begin, end)), covering tiles [tile_begin, tile_end) of tile_queries queries each.
struct WorkItem {
  int64_t j, g, b;
  int32_t begin, end;
  int tile_begin, tile_end;
};

// CTA `item`'s work (item_list maps items to lists, item_start gives each list's first item, as
// item_count_kernel counted them with the same tile_queries and min_tiles); false past the last
// item (grids are sized by a bound, not the count).
__device__ __forceinline__ bool find_work_item(int32_t item, const int32_t* item_start,
                                               const int32_t* item_list,
                                               const int32_t* list_start, int64_t lists,
                                               const KvDims& a, int tile_queries, int min_tiles,
                                               WorkItem& w) {
  if (item >= item_start[lists]) return false;
  const int64_t list = item_list[item];
  w.j = list % a.nb;
  w.g = (list / a.nb) % a.G;
  w.b = list / (a.nb * a.G);
  w.begin = list_start[list];
  w.end = list_start[list + 1];
  const int n_tiles = (w.end - w.begin + tile_queries - 1) / tile_queries;
  const int per_split = forward_per_split(n_tiles, min_tiles);
  w.tile_begin = (item - item_start[list]) * per_split;
  w.tile_end = min(n_tiles, w.tile_begin + per_split);
  return true;
}

// A backward work item: n_tiles tiles of one list from entry begin on, as find_work_item splits
// the list (end is the list's end, which its last tile may not reach). A list split over several
// items has several writers of its keys' dK/dV (shared: they add atomically); deterministic mode
// keeps one item per list (backward_min_tiles), so its sums keep their order.
struct BackwardItem {
  int64_t j, g, b;
  int32_t begin, end;
  int n_tiles;
  bool shared;
};

__device__ __forceinline__ bool find_backward_item(int32_t item, const int32_t* item_start,
                                                   const int32_t* item_list,
                                                   const int32_t* list_start, int64_t lists,
                                                   const KvDims& a, int tile_queries,
                                                   int min_tiles, BackwardItem& w) {
  WorkItem wi;
  if (!find_work_item(item, item_start, item_list, list_start, lists, a, tile_queries, min_tiles,
                      wi))
    return false;
  const int32_t list = item_list[item];
  w.j = wi.j;
  w.g = wi.g;
  w.b = wi.b;
  w.begin = wi.begin + wi.tile_begin * tile_queries;
  w.end = wi.end;
  w.n_tiles = wi.tile_end - wi.tile_begin;
  w.shared = item_start[list + 1] - item_start[list] > 1;
  return true;
}

// Minimum tiles per backward item: `fast` normally, one item per list (a single writer of each
// key's dK/dV, summing in list order) in deterministic mode.
inline int backward_min_tiles(int fast, bool deterministic_mode) {
  return deterministic_mode ? (1 << 24) : fast;
}

// The softmax of one key block for a warp's two accumulator rows (C-fragment order, the same for
// mma.sync and wgmma: element i of the N = BK / 2 per thread is row grp + 8 ((i / 2) & 1), key
// 8 (i / 4) + 2 tig + (i & 1)). Keys past lim[h] (the row's last attended key: causal, sequence
// end) are masked first, only where some row of the warp needs it. On return s holds
// exp2(s scale_log2 - mxs[h]) and sum[h] its row sum over the quad; rows with nothing to attend
// (padding) get mxs 0, keeping NaNs out.
template <int N>
__device__ __forceinline__ void masked_block_softmax(float (&s)[N], const int (&lim)[2], int tig,
                                                     float scale_log2, float (&mxs)[2],
                                                     float (&sum)[2]) {
  constexpr int kKeys = 2 * N;
  if (__any_sync(0xffffffffu, lim[0] < kKeys - 1 || lim[1] < kKeys - 1)) {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if ((i / 4) * 8 + 2 * tig + (i & 1) > lim[(i / 2) & 1]) s[i] = -INFINITY;
  }
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int i = 0; i < N; ++i) mx[(i / 2) & 1] = fmaxf(mx[(i / 2) & 1], s[i]);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
    if (mx[h] == -INFINITY) mx[h] = 0.0f;
    mxs[h] = mx[h] * scale_log2;
    sum[h] = 0.0f;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int h = (i / 2) & 1;
    s[i] = fast_exp2(fmaf(s[i], scale_log2, -mxs[h]));
    sum[h] += s[i];
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
    sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
  }
}

// Partial rows are stored in mma fragment order, so each thread writes its part of a row as one
// contiguous run with 16-byte stores: element p = tig * (D / 4) + 2 nt + e holds dimension
// 8 nt + 2 tig + e.
template <int D>
__device__ __forceinline__ int fragment_order_dim(int p) {
  const int tig = p / (D / 4), w = p % (D / 4);
  return (w / 2) * 8 + 2 * tig + (w & 1);
}

// Work lists of one launch (query chunk [a.t0, a.t1) of a.nseq sequences; indices and counts
// already offset to the first), as the attention kernels build them (msa_attention_kv_outer.cu):
// list (b, g, j) = (b G + g) nb + j holds entries (t << 5) | slot in list_start[list] ..
// list_start[list + 1]. len (lists + 1) and cursor (lists) are scratch, lists = a.lists();
// scan_tmp holds work_list_scan_bytes(lists) bytes.
size_t work_list_scan_bytes(int64_t lists);
// Order: kSortWhenDeterministic for consumers that sum over a list in its order (the backward
// kernels, the index loss), kAnyOrder for the forward (each (query, slot) owns its partial).
enum class ListOrder { kSortWhenDeterministic, kAnyOrder };
void build_work_lists(const int32_t* indices, const int32_t* counts, const KvDims& a,
                      int32_t* len, int32_t* cursor, int32_t* list_start, int32_t* entries,
                      void* scan_tmp, size_t scan_bytes,
                      ListOrder order = ListOrder::kSortWhenDeterministic);
// The query chunk of the KV-outer attention (forward and backward; MSA_KV_OUTER_CHUNK overrides):
// as many queries as keep its partials within budget, a multiple of the block size. The index
// loss takes the same chunks when it can, to share the attention's cached work lists.
int64_t query_chunk(const cpu::MsaDims& d);
// Sequences per launch: when whole sequences fit the chunk budget, as many as fit (at most the
// batch), so short sequences share a launch instead of each filling a fraction of the GPU
// (MSA_KV_OUTER_SEQS caps it, for tests); else 1, the sequence in chunks.
int64_t sequences_per_launch(const cpu::MsaDims& d);
// n sequences per launch, capped by MSA_KV_OUTER_SEQS (tests, A/B runs), at least 1: the cap of
// every launch that batches sequences (the attention, both index-loss modes).
int64_t capped_sequences_per_launch(int64_t n);
// One chunk's work lists (list_start and entries as build_work_lists writes them), from `cache`
// (BlockSelection::cache, nullable) when there, else built: with a cache into new buffers that
// stay there (sorted in deterministic mode, since a backward may reuse them), without one into
// the caller's start / entries in `order`. indices / counts are the selection's whole tensors (an
// entry keeps them alive); idx / cnt point at the launch's first sequence's rows.
struct ChunkLists {
  const int32_t* start;
  const int32_t* entries;
};
ChunkLists chunk_work_lists(SelectionCache* cache, const Tensor& indices, const Tensor& counts,
                            const int32_t* idx, const int32_t* cnt, const KvDims& a,
                            ListOrder order, Tensor& len, Tensor& cursor, Tensor& start,
                            Tensor& entries, Tensor& scan_tmp, size_t scan_bytes);
// Deterministic mode (core/deterministic.h): build_work_lists also sorts each list ascending
// (sort_work_lists) unless kAnyOrder, since list_fill_kernel's atomic cursors order a list
// differently from run to run and the backward kernels sum over a list in its order. entries has
// capacity elements (at least the chunk's rows x K).
void sort_work_lists(int32_t* entries, int64_t capacity, const int32_t* list_start, int64_t lists);
// A bound on the work items of `entries` list entries in `lists` lists (tiles of tile_queries
// entries, at least min_tiles per item): each list has at most n_tiles / min_tiles + 1 items and
// n_tiles <= its entries / tile_queries + 1, so item_list and the grids are sized without reading
// the total back.
inline int64_t work_items_bound(int64_t entries, int tile_queries, int min_tiles, int64_t lists) {
  return (entries / tile_queries + lists) / min_tiles + lists + 2;
}
// The work items find_work_item reads (tiles of tile_queries entries, at least min_tiles per item):
// item_start (lists + 1; the total at item_start[lists]) and item_list (at least
// work_items_bound long); item_len (lists + 1) is scratch.
void build_work_items(const int32_t* list_start, int64_t lists, int tile_queries, int min_tiles,
                      int32_t* item_len, int32_t* item_start, int32_t* item_list,
                      void* scan_tmp, size_t scan_bytes);

// The sm_90a kernels (msa_attention_fwd_wgmma.cu, msa_attention_bwd_wgmma.cu), head_dim 128 and
// block size 128: true when this device is a Hopper and the binary carries sm_90a code
// (MSA_KV_OUTER_WGMMA=0 turns them off).
bool wgmma_available();
// Queries per CTA tile of that kernel (its work items are counted in these tiles) and its
// minimum tiles per CTA.
int wgmma_forward_queries_per_tile(int64_t r);
// 64 (4096 rows per K/V load): 8 / 16 / 32 / 64 gave 24.6 / 23.3 / 22.8 / 22.6 ms at 128K (an
// earlier kernel); with bulk stores 32 -> 64 took 40.5 -> 40.1 ms at 128K, paper shape, and
// 12.0 -> 11.8 at the 1B shape, the same at 8K and 32K.
constexpr int kWgmmaMinTilesPerCta = 64;
// item_list[i]: the list of work item i (item_start: each list's first item).
void launch_wgmma_forward(const bf16* q, const bf16* k, const bf16* v, const int32_t* list_start,
                          const int32_t* item_start, const int32_t* item_list, int64_t lists, const int32_t* entries,
                          float scale_log2, bf16* part, float* lse_part, const KvDims& a,
                          int64_t max_items, int min_tiles);
// One CTA per work item (a run of one list's tiles); dk_acc/dv_acc f32 [a.nseq, Sk, G, 128]
// (zeroed by the caller) accumulate across chunks.
void launch_wgmma_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* dout,
                           const float* lse, const float* dsum, const int32_t* list_start,
                           const int32_t* item_start, const int32_t* item_list,
                           const int32_t* entries, float scale, bf16* dq_part, float* dk_acc,
                           float* dv_acc, const KvDims& a, int64_t lists, int64_t max_items,
                           int min_tiles);
// Entries per tile of the wgmma backward kernel (its items are counted in these tiles), and its
// minimum tiles per item outside deterministic mode.
int wgmma_backward_queries_per_tile(int64_t r);
constexpr int kWgmmaBwdMinTiles = 16;

}  // namespace msa::cuda::kv_outer
