// CPU reference MSA kernels (contract in kernels/msa.h). T is float or double;
// block indices and counts are int32. Layouts: iq, ik [batch, seq, G, dI]; kbar
// [batch, n_b, G, dI]; q [batch, seq, H, d]; k, v [batch, seq, G, d]; lse
// [batch, H, seq]; indices [batch, seq, G, topk]; counts [batch, seq, G].
#pragma once

#include <cstdint>

namespace msa::cpu {

struct MsaDims {
  int64_t batch, seq, heads, groups, dim;  // main branch (heads % groups == 0)
  int64_t index_dim;                       // dI
  int64_t block_size, topk;
  int64_t num_blocks() const { return (seq + block_size - 1) / block_size; }
};

template <class T>
void msa_block_pool_forward(const T* ik, T* kbar, const MsaDims& dims);
template <class T>
void msa_block_pool_backward(const T* dkbar, T* dik, const MsaDims& dims);

template <class T>
void msa_index_topk(const T* iq, const T* kbar, int32_t* indices, int32_t* counts,
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
  double kl_sum = 0;   // sum of KL(P || Q) over counted rows
  int64_t n_rows = 0;  // counted rows
};

// dense_target: P and Q over all eligible blocks j < c(t) (indices/counts
// unused); else over the selected non-local blocks. diq, dkbar get the gradient
// of weight * mean KL (overwritten).
template <class T>
IndexLossSums msa_index_loss(bool dense_target, const T* q, const T* k, const T* lse,
                             const int32_t* indices, const int32_t* counts, const T* iq,
                             const T* kbar, double scale, double weight, T* diq, T* dkbar,
                             const MsaDims& dims);

// Sum over sampled (b, t, h) of the dense attention mass inside the selected
// blocks, and the number of terms.
template <class T>
double msa_index_recall_sum(const T* q, const T* k, const int32_t* indices, const int32_t* counts,
                            double scale, int64_t query_stride, int64_t* n_terms,
                            const MsaDims& dims);

}  // namespace msa::cpu
