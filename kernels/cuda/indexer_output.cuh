// The last step both indexer kernels share (msa_indexer_topk.cu, msa_indexer_topk_wgmma.cu):
// one row's kept blocks, held best first in registers, written in the BlockSelection format.
#pragma once

#include <cstdint>

namespace msa::cuda {

// li[0..want) holds the row's selected earlier blocks best first (want = min(K - 1, c_row));
// writes them ascending, then the local block c_row, then -1 padding up to K, and the count.
// Each entry goes straight to its rank by block index: no sort, static register indexing.
template <int KL, class Index>
__device__ __forceinline__ void write_selection_row(const Index (&li)[KL], int want, int c_row,
                                                    int K, int32_t* out, int32_t* count) {
#pragma unroll
  for (int a = 0; a < KL; ++a) {
    if (a >= want) continue;
    int rank = 0;
#pragma unroll
    for (int o = 0; o < KL; ++o) rank += (o < want && li[o] < li[a]) ? 1 : 0;
    out[rank] = li[a];
  }
  out[want] = c_row;
  for (int a = want + 1; a < K; ++a) out[a] = -1;
  *count = want + 1;
}

}  // namespace msa::cuda
