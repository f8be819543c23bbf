// CPU reference MSA kernels (contract in kernels/msa.h). T is float or double;
// block indices and counts are int32. Layouts: iq [batch, seq, G, dI]; ik [batch, keys(), dI]
// (one shared index key head); q [batch, seq, H, d]; k, v [batch, keys(), G, d]; lse
// [batch, H, seq]; indices [batch, seq, G, topk]; counts [batch, seq, G]. Query t sits at
// position query_offset() + t; blocks are counted over the keys' positions from 0.
#pragma once

#include <cstdint>

namespace msa::cpu {

struct MsaDims {
  int64_t batch, seq, heads, groups, dim;  // main branch (heads % groups == 0)
  int64_t index_dim;                       // dI
  int64_t block_size, topk;
  int64_t kv_seq = 0;  // key tokens (>= seq); 0: as many as queries
  int64_t keys() const { return kv_seq > 0 ? kv_seq : seq; }
  int64_t query_offset() const { return keys() - seq; }  // position of query 0
  int64_t num_blocks() const { return (keys() + block_size - 1) / block_size; }
};

// Max-pooled token scores, exp-free top-k (kernels/msa.h).
template <class T>
void msa_index_topk(const T* iq, const T* ik, int32_t* indices, int32_t* counts,
                    const MsaDims& dims);

template <class T>
void msa_sparse_attention_forward(const T* q, const T* k, const T* v, const int32_t* indices,
                                  const int32_t* counts, double scale, T* out, T* lse,
                                  const MsaDims& dims);
template <class T>
void msa_sparse_attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                                   const T* lse, const int32_t* indices, const int32_t* counts,
                                   double scale, T* dq, T* dk, T* dv, const MsaDims& dims);

struct IndexLossSums {
  double kl_sum = 0;   // sum of KL(P || Q) over the rows
  int64_t n_rows = 0;  // rows: batch * seq * groups
};

// Token-level distillation loss (kernels/msa.h). dense_target: U = all s <= t (indices/counts
// unused); else U = the tokens s <= t of the selected blocks. diq [batch, seq, G, dI] and dik
// [batch, seq, dI] get the gradient of weight * (kl_sum / n_rows) (overwritten).
template <class T>
IndexLossSums msa_index_loss(bool dense_target, const T* q, const T* k, const T* lse,
                             const int32_t* indices, const int32_t* counts, const T* iq,
                             const T* ik, double scale, double weight, T* diq, T* dik,
                             const MsaDims& dims);

// The queries of a recall, grouped by batch row: row b's positions are
// t[begin[b]] .. t[begin[b + 1] - 1] (begin has batch + 1 entries), each in [0, seq).
struct RecallQueries {
  const int64_t* begin;
  const int64_t* t;
};

// Sums over the queries' (b, t, g) rows of the selector measures (kernels/msa.h), from one pass
// over the dense attention: the index recall (the group's mean attention mass inside the selected
// blocks, so the sum over rows is r times less than the sum over (b, t, h) with the same mean),
// the block recall and the index recall ceiling against the oracle blocks, and the max-pool
// ceiling (the mass kept by the paper's selection rule fed perfect token scores); n_rows =
// queries * groups.
struct OracleRecallSums {
  double index_recall = 0;
  double block_recall = 0;
  double index_recall_ceiling = 0;
  double max_pool_recall_ceiling = 0;
  int64_t n_rows = 0;
};
template <class T>
OracleRecallSums msa_oracle_recall_sums(const T* q, const T* k, const int32_t* indices,
                                        const int32_t* counts, double scale,
                                        const RecallQueries& queries, const MsaDims& dims);

}  // namespace msa::cpu
