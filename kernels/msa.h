// MiniMax Sparse Attention (DESIGN.md section 4): block-key pooling, index scoring with exp-free
// top-k, block-sparse causal GQA attention, and the index distillation loss.
//
// Notation: B block size, n_b = ceil(T / B) blocks, block j covers tokens [jB, min((j+1)B, T)),
// query t lies in block c(t) = t / B. G KV groups, H query heads (r = H / G per group), d_I index
// dim. Index tensors: iq, ik [batch, T, G, d_I]; block keys kbar [batch, n_b, G, d_I].
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace msa {

inline int64_t msa_num_blocks(int64_t T, int64_t block_size) {
  return (T + block_size - 1) / block_size;
}

// The blocks each (sequence, query token, KV group) row attends to.
struct BlockSelection {
  int block_size = 128;
  int topk = 16;
  // i32 [batch, T, G, topk]: the first counts[b, t, g] entries hold the selected block indices in
  // ascending order (so the local block c(t) is the last of them); the rest are -1.
  Tensor indices;
  // i32 [batch, T, G]: min(topk, c(t) + 1).
  Tensor counts;

  // Allocates indices and counts for the given sizes on `device`.
  static BlockSelection allocate(int64_t batch, int64_t T, int64_t G, int block_size, int topk,
                                 Device device);
};

// kbar[b, j, g] = mean of ik[b, s, g] over the tokens s of block j (the last block may be partial).
void msa_block_pool_forward(const Tensor& ik, int block_size, Tensor& kbar);
// dik [batch, T, G, d_I] overwritten: each token gets dkbar of its block / (tokens in the block).
void msa_block_pool_backward(const Tensor& dkbar, int block_size, Tensor& dik);

// Exp-free top-k: s_{t,g,j} = iq_{t,g} . kbar_{g,j} / sqrt(d_I) for eligible j < c(t); selects
// c(t) plus the top-(topk - 1) eligible blocks by raw score, ties to the lower block index (all
// eligible blocks when fewer than topk - 1 exist). sel must be allocated with matching sizes.
// CPU: iq, kbar f32 or f64. CUDA: bf16 or f32 inputs, scores accumulated in f32.
void msa_index_topk(const Tensor& iq, const Tensor& kbar, BlockSelection& sel);

// Causal attention of every query head over the keys of its group's selected blocks only (causal
// mask inside the local block), scale `scale`. Shapes as in kernels/attention.h.
void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const BlockSelection& sel, double scale, Tensor& out, Tensor& lse);
// As above, also writing the forward's per-block attention mass for the sparse index loss:
// block_mass f32 [batch, T, H, topk], slot i of (t, h) = sum over the attended keys s of the i-th
// selected block of exp(scale q_{t,h}.k_s - lse_{t,h}) (0 past the row's count). CUDA only.
void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const BlockSelection& sel, double scale, Tensor& out, Tensor& lse,
                                  Tensor& block_mass);
// dq, dk, dv overwritten. The selection is treated as a constant.
void msa_sparse_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const BlockSelection& sel, double scale, Tensor& dq, Tensor& dk,
                                   Tensor& dv);

enum class IndexLossMode {
  // P over the selected non-local blocks S' = S \ {c(t)}, from the sparse main branch's
  // probabilities (its q, k and lse); rows with |S'| >= 2 count.
  kSparse,
  // P over all eligible blocks j < c(t), from dense attention (q, k and the dense lse); rows with
  // c(t) >= 2 count. sel is not used (may be default-constructed).
  kDenseTarget,
};

struct IndexLossResult {
  double loss = 0;       // mean KL(P || Q) over the counted (sequence, t, g) rows
  int64_t n_rows = 0;    // rows counted
};

// Index distillation loss. For each counted row: a_{t,h,s} = exp(scale q_{t,h}.k_s - lse_{t,h})
// restricted to the row's blocks and renormalized per head; P_j = (1/r) sum_h sum_{s in j} a;
// Q = softmax_j(s_{t,g,j}); loss = mean KL(P || Q). P is a constant (no gradient into q, k).
// Gradients of weight * loss: diq [batch, T, G, d_I] and dkbar [batch, n_b, G, d_I], overwritten.
IndexLossResult msa_index_loss(IndexLossMode mode, const Tensor& q, const Tensor& k,
                               const Tensor& lse, const BlockSelection& sel, const Tensor& iq,
                               const Tensor& kbar, double scale, int block_size, double weight,
                               Tensor& diq, Tensor& dkbar);

// The kSparse loss above computed from the forward's block masses (no second pass over q and k;
// the same function up to rounding). CUDA only; diq, dkbar f32.
IndexLossResult msa_index_loss_from_mass(const Tensor& block_mass, const BlockSelection& sel,
                                         const Tensor& iq, const Tensor& kbar, int block_size,
                                         double weight, Tensor& diq, Tensor& dkbar);

// Index recall: mean over sampled queries t (t = 0, stride, 2*stride, ...; every batch row) and
// heads h of the dense causal attention mass that falls inside the blocks selected for (t, g(h)).
// 1.0 means the selector keeps all the attention. Any device (computed on the CPU).
double msa_index_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        int64_t query_stride);

}  // namespace msa
