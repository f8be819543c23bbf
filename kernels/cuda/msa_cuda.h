// CUDA MSA kernels (contract in kernels/msa.h, sizes in kernels/cpu/msa.h's MsaDims). Activations
// are bf16 or f32 (template-dispatched by dtype), statistics (lse) f32, indices int32.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/cpu/msa.h"

namespace msa {
class SelectionCache;  // kernels/msa.h
}  // namespace msa

namespace msa::cuda {

// Max-pooled token scores with exp-free top-k (kernels/msa.h): iq [batch, Tq, G, d_I], ik [batch,
// Tk, d_I] (Tk = dims.keys() >= Tq: query t at position dims.query_offset() + t, any offset).
// bf16 inputs run the tensor-core indexer (msa_indexer_topk.cu: q^I k^I tiles reduced to block
// maxima and fed straight into the top-k; no T x n_b scores in memory); f32 inputs a CUDA-core
// kernel with the CPU reference's arithmetic.
void msa_index_topk(const Tensor& iq, const Tensor& ik, Tensor& indices, Tensor& counts,
                    const cpu::MsaDims& dims);
// block_mass: nullable, f32 [batch, T, H, topk]: slot i of (t, h) = the attention mass of the
// i-th selected block (a by-product of the combine; no caller needs it any more).
// cache (nullable): the selection's (BlockSelection::cache); the KV-outer kernels keep their work
// lists there and reuse them.
void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& indices, const Tensor& counts, double scale,
                                  Tensor& out, Tensor& lse, Tensor* block_mass,
                                  const cpu::MsaDims& dims, SelectionCache* cache = nullptr);
void msa_sparse_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const Tensor& indices, const Tensor& counts, double scale,
                                   Tensor& dq, Tensor& dk, Tensor& dv, const cpu::MsaDims& dims,
                                   SelectionCache* cache = nullptr);

// The tensor-core KV-outer forward (msa_attention_kv_outer.cu): bf16, head_dim 64/128, block
// size 64/128, H / G dividing 16, topk <= 32. MSA_SPARSE_ATTENTION=reference forces the
// first-generation kernel (tests compare the two).
bool kv_outer_attention_supported(const Tensor& q, const cpu::MsaDims& dims);
void kv_outer_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& indices, const Tensor& counts, double scale,
                                Tensor& out, Tensor& lse, Tensor* block_mass,
                                const cpu::MsaDims& dims, SelectionCache* cache);

// Sequences of the batch that share each launch of those kernels and of the sparse index loss
// (whole sequences whose partials fit together; MSA_KV_OUTER_SEQS caps it), for tests.
int64_t kv_outer_sequences_per_launch(const cpu::MsaDims& dims);

// Its backward: dsum [batch, H, T] = rowsum(dout * out) (f32), lse from the forward.
void kv_outer_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& dsum, const Tensor& lse,
                                 const Tensor& indices, const Tensor& counts, double scale,
                                 Tensor& dq, Tensor& dk, Tensor& dv, const cpu::MsaDims& dims,
                                 SelectionCache* cache);

// Token-level index distillation loss (kernels/msa.h) on the GPU: q, k, iq, ik bf16; lse, diq
// [batch, Tq, G, d_I] and dik [batch, Tk, d_I] f32 (overwritten with the gradient of
// weight * kl_sum / n_rows; every key row of dik written). Queries sit at positions
// dims.query_offset() + t (any offset). Implemented in msa_index_loss_cuda.cu.
// Sizes the GPU kernels take (bf16 q/k/iq/ik; the head dims, index dim, block size and r they were
// written for); kernels/msa.cc runs the CPU reference on host copies otherwise.
bool index_loss_cuda_supported(const Tensor& q, const Tensor& iq, const cpu::MsaDims& dims);
// Sparse mode: U = the selected blocks' tokens s <= p (p = query_offset + t).
cpu::IndexLossSums msa_index_loss_sparse(const Tensor& q, const Tensor& k, const Tensor& lse,
                                         const Tensor& indices, const Tensor& counts,
                                         const Tensor& iq, const Tensor& ik, double scale,
                                         double weight, Tensor& diq, Tensor& dik,
                                         const cpu::MsaDims& dims, SelectionCache* cache = nullptr);
// Warm-up mode: U = all s <= p, flash-style (online log-sum-exp,
// recomputation; no T x T buffers).
cpu::IndexLossSums msa_index_loss_dense(const Tensor& q, const Tensor& k, const Tensor& lse,
                                        const Tensor& iq, const Tensor& ik, double scale,
                                        double weight, Tensor& diq, Tensor& dik,
                                        const cpu::MsaDims& dims);

// The selector measures' sums over the queries' (b, t, g) rows (kernels/msa.h's OracleRecall, the
// definition in cpu::msa_oracle_recall_sums) from q [batch, Tq, H, d] and k [batch, Tk, G, d] bf16
// and the selection on the GPU, in f32, summed in the reference's order (msa_recall_cuda.cu).
// queries: host arrays. Supported: bf16 q and k, d 16 / 32 / 64 / 128, r <= 64, k <= 32;
// MSA_RECALL=reference makes it false (the CPU reference runs on host copies).
bool oracle_recall_cuda_supported(const Tensor& q, const Tensor& k, const cpu::MsaDims& dims);
cpu::OracleRecallSums oracle_recall_sums(const Tensor& q, const Tensor& k, const Tensor& indices,
                                         const Tensor& counts, double scale,
                                         const cpu::RecallQueries& queries,
                                         const cpu::MsaDims& dims);

}  // namespace msa::cuda
