// Pieces shared by the KV-outer sparse-attention kernels (msa_attention_kv_outer.cu: work lists,
// the mma.sync forward, combine, backward; msa_attention_fwd_wgmma.cu: the sm_90a forward).
#pragma once

#include <cstdint>

#include "core/bf16.h"

namespace msa::cuda::kv_outer {

struct KvDims {
  int64_t S, H, G, K, r;
  int64_t nb;
  int64_t t0, t1;  // query chunk
};

// A list's query tiles are shared by up to kSplits CTAs, each taking at least min_tiles
// consecutive tiles so the K/V load into shared memory is amortized; long lists (the early
// blocks, selected by many queries) spread over more CTAs (docs/perf.md has the measurements).
constexpr int kSplits = 16;

__host__ __device__ __forceinline__ int forward_per_split(int n_tiles, int min_tiles) {
  const int even = (n_tiles + kSplits - 1) / kSplits;
  return even > min_tiles ? even : min_tiles;
}

// Partial rows are stored in mma fragment order, so each thread writes its part of a row as one
// contiguous run with 16-byte stores: element p = tig * (D / 4) + 2 nt + e holds dimension
// 8 nt + 2 tig + e.
template <int D>
__device__ __forceinline__ int fragment_order_dim(int p) {
  const int tig = p / (D / 4), w = p % (D / 4);
  return (w / 2) * 8 + 2 * tig + (w & 1);
}

// The sm_90a kernels (msa_attention_fwd_wgmma.cu, msa_attention_bwd_wgmma.cu), head_dim 128 and
// block size 128: true when this device is a Hopper and the binary carries sm_90a code
// (MSA_KV_OUTER_WGMMA=0 turns them off).
bool wgmma_available();
// Queries per CTA tile of that kernel (its work items are counted in these tiles) and its
// minimum tiles per CTA.
int wgmma_forward_queries_per_tile(int64_t r);
// 32 (2048 rows per K/V load): 8 / 16 / 32 / 64 gave 24.6 / 23.3 / 22.8 / 22.6 ms at 128K.
constexpr int kWgmmaMinTilesPerCta = 32;
// item_list[i]: the list of work item i (item_start: each list's first item).
void launch_wgmma_forward(const bf16* q, const bf16* k, const bf16* v, const int32_t* list_start,
                          const int32_t* item_start, const int32_t* item_list, int64_t lists, const int32_t* entries,
                          float scale_log2, bf16* part, float* lse_part, const KvDims& a,
                          int64_t max_items, int min_tiles);
// One CTA per list (lists = G x n_b); dk_acc/dv_acc f32 [S, G, 128] accumulate across chunks.
void launch_wgmma_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* dout,
                           const float* lse, const float* dsum, const int32_t* list_start,
                           const int32_t* entries, float scale, bf16* dq_part, float* dk_acc,
                           float* dv_acc, const KvDims& a, int64_t lists);

}  // namespace msa::cuda::kv_outer
