// CUDA MSA kernels (contract in kernels/msa.h, sizes in kernels/cpu/msa.h's MsaDims). Activations
// are bf16 or f32 (template-dispatched by dtype), statistics (lse) f32, indices int32.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/cpu/msa.h"

namespace msa::cuda {

void msa_block_pool_forward(const Tensor& ik, Tensor& kbar, const cpu::MsaDims& dims);
void msa_block_pool_backward(const Tensor& dkbar, Tensor& dik, const cpu::MsaDims& dims);
void msa_index_topk(const Tensor& iq, const Tensor& kbar, Tensor& indices, Tensor& counts,
                    const cpu::MsaDims& dims);
// The tensor-core top-k (msa_topk_mma.cu) for bf16 index vectors, d_I 16/32/64/128, topk <= 32;
// MSA_TOPK=reference forces the CUDA-core kernel (the CPU's arithmetic).
bool topk_mma_supported(const Tensor& iq, const cpu::MsaDims& dims);
void topk_mma(const Tensor& iq, const Tensor& kbar, Tensor& indices, Tensor& counts,
              const cpu::MsaDims& dims);
// block_mass: nullable, f32 [batch, T, H, topk] (see kernels/msa.h).
void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& indices, const Tensor& counts, double scale,
                                  Tensor& out, Tensor& lse, Tensor* block_mass,
                                  const cpu::MsaDims& dims);
void msa_sparse_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const Tensor& indices, const Tensor& counts, double scale,
                                   Tensor& dq, Tensor& dk, Tensor& dv, const cpu::MsaDims& dims);

// The tensor-core KV-outer forward (msa_attention_kv_outer.cu): bf16, head_dim 64/128, block
// size 64/128, H / G dividing 16, topk <= 32. MSA_SPARSE_ATTENTION=reference forces the
// first-generation kernel (tests compare the two).
bool kv_outer_attention_supported(const Tensor& q, const cpu::MsaDims& dims);
void kv_outer_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& indices, const Tensor& counts, double scale,
                                Tensor& out, Tensor& lse, Tensor* block_mass,
                                const cpu::MsaDims& dims);

// Its backward: dsum [batch, H, T] = rowsum(dout * out) (f32), lse from the forward.
void kv_outer_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& dsum, const Tensor& lse,
                                 const Tensor& indices, const Tensor& counts, double scale,
                                 Tensor& dq, Tensor& dk, Tensor& dv, const cpu::MsaDims& dims);

// Sparse-mode index distillation loss from the forward's block masses (msa_index_loss_cuda.cu):
// returns the KL sum and the counted rows; diq [batch, T, G, d_I] and dkbar [batch, n_b, G, d_I]
// (f32) receive the gradient of weight * mean KL.
cpu::IndexLossSums msa_index_loss_from_mass(const Tensor& block_mass, const Tensor& indices,
                                            const Tensor& counts, const Tensor& iq,
                                            const Tensor& kbar, double weight, Tensor& diq,
                                            Tensor& dkbar, const cpu::MsaDims& dims);

// The dense-target loss (P over every block j < c(t) of the dense attention: q, k and the dense
// lse) with a tensor-core pass for the block masses: bf16 q/k, head_dim 16..128 and block size
// 16..128 (powers of two), H / G dividing 16. diq, dkbar f32.
bool dense_target_loss_supported(const Tensor& q, const cpu::MsaDims& dims);
cpu::IndexLossSums msa_index_loss_dense_target(const Tensor& q, const Tensor& k, const Tensor& lse,
                                               const Tensor& iq, const Tensor& kbar, double scale,
                                               double weight, Tensor& diq, Tensor& dkbar,
                                               const cpu::MsaDims& dims);

}  // namespace msa::cuda
