// The attention block's position-mixing kernels run per document of a packed batch
// (model/document_segments.h), unchanged: a document [s, e) of row b of a [batch, T, ...] tensor is
// the contiguous view [1, e - s, ...] (rows are contiguous), so each kernel sees one sequence of
// length e - s starting at position 0. That restarts RoPE positions, keeps attention, the MSA
// selection (blocks counted from the document's start) and the index loss inside the document,
// on the CPU and CUDA alike, without a kernel that knows about documents.
//
// Under context parallelism a rank holds the tokens [p0, p0 + T) of each row and the gathered
// keys [0, p0 + T): a document's queries are the part of it in the shard, its keys run from the
// document's start to the end of those queries (key-shaped tensors k, v, ik and their gradients
// are [batch, p0 + T, ...]), and the kernels take the queries bottom-right of the keys (their
// query offset, any value), with RoPE positions counted from the document's start.
//
// `docs` null (or every row one document) runs each kernel once on the whole tensors, exactly as
// before. Otherwise every kernel runs once per document: many short documents mean many small
// launches on the GPU (and, for cuDNN's dense attention, one cached plan per distinct document
// length); fine for documents of a few hundred tokens and more.
//
// The log-sum-exp statistics have their own layout when packed: document i's [1, H, L] block
// lies at offset lse_offset(i) of a flat tensor, each block starting 16-byte aligned (cuDNN and
// the vectorized kernels read it as a separate tensor). segmented_lse_empty allocates it; without
// packing it is the usual [batch, H, T].
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/msa.h"
#include "kernels/rope.h"
#include "model/document_segments.h"

namespace msa {

// True when the kernels must run per document.
inline bool runs_per_document(const DocumentSegments* docs) {
  return docs != nullptr && docs->any_split();
}

// The lse tensor for heads H: [batch, H, T], or the packed layout above.
Tensor segmented_lse_empty(const DocumentSegments* docs, int64_t batch, int64_t H, int64_t T,
                           DType dtype, Device device);

// kernels/rope.h with positions counted from each document's start. x, y [batch, T, n, d].
void segmented_rope_forward(const DocumentSegments* docs, const Tensor& x, const RopeConfig& rope,
                            Tensor& y);
void segmented_rope_backward(const DocumentSegments* docs, const Tensor& dy, const RopeConfig& rope,
                             Tensor& dx);

// kernels/attention.h, per document.
void segmented_attention_forward(const DocumentSegments* docs, const Tensor& q, const Tensor& k,
                                 const Tensor& v, double scale, Tensor& out, Tensor& lse);
void segmented_attention_backward(const DocumentSegments* docs, const Tensor& dout, const Tensor& q,
                                  const Tensor& k, const Tensor& v, const Tensor& out,
                                  const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                                  Tensor& dv);

// kernels/msa.h, per document. `sel` is allocated for [batch, T] as usual; each document's rows
// hold block indices counted from that document's start.
void segmented_msa_index_topk(const DocumentSegments* docs, const Tensor& iq, const Tensor& ik,
                              BlockSelection& sel);
void segmented_msa_sparse_attention_forward(const DocumentSegments* docs, const Tensor& q,
                                            const Tensor& k, const Tensor& v,
                                            const BlockSelection& sel, double scale, Tensor& out,
                                            Tensor& lse);
void segmented_msa_sparse_attention_backward(const DocumentSegments* docs, const Tensor& dout,
                                             const Tensor& q, const Tensor& k, const Tensor& v,
                                             const Tensor& out, const Tensor& lse,
                                             const BlockSelection& sel, double scale, Tensor& dq,
                                             Tensor& dk, Tensor& dv);
// The loss stays the mean over all batch * T * G rows and the gradients those of weight * it:
// document i runs with weight * (its rows / all rows), and its mean KL counts with the same share.
IndexLossResult segmented_msa_index_loss(const DocumentSegments* docs, IndexLossMode mode,
                                         const Tensor& q, const Tensor& k, const Tensor& lse,
                                         const BlockSelection& sel, const Tensor& iq,
                                         const Tensor& ik, double scale, double weight, Tensor& diq,
                                         Tensor& dik);
// Sampled recalls: each document's strided sample (kernels/msa.h: one query per stride window,
// positions counted from the document's start); the documents' means
// weighted by their sampled queries (so the result is the mean over all sampled terms): index
// recall, block recall, the index recall ceiling and the max-pool ceiling from one pass
// (kernels/msa.h).
OracleRecall segmented_msa_oracle_recall(const DocumentSegments* docs, const Tensor& q,
                                         const Tensor& k, const BlockSelection& sel, double scale,
                                         int64_t query_stride);

}  // namespace msa
