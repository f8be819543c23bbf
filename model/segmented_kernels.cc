#include "model/segmented_kernels.h"

#include "kernels/attention.h"
#include "kernels/matmul.h"

namespace msa {
namespace {

// n rows of row `row` of a [batch, L, ...] tensor from `first` on, as the sequence [1, n, ...].
Tensor row_range(const Tensor& t, const DocumentSegments& docs, int64_t L, int64_t row,
                 int64_t first, int64_t n, const char* what) {
  MSA_CHECK(t.ndim() >= 2 && t.size(0) == docs.batch() && t.size(1) == L,
            "document %s: %s is not [batch %d, %d, ...]", what, t.describe(), docs.batch(), L);
  Shape shape = t.shape();
  const int64_t inner = t.numel() / (docs.batch() * L);
  shape[0] = 1;
  shape[1] = n;
  return t.view({docs.batch() * L, inner}).slice0(row * L + first, row * L + first + n).view(shape);
}

// Segment s's queries in a [batch, T, ...] tensor: tokens [begin, end) of its row.
Tensor document_view(const Tensor& t, const DocumentSegments& docs, const DocumentSegment& s) {
  return row_range(t, docs, docs.seq_len(), s.row, s.begin, s.length(), "view");
}

// The keys of segment s in a [batch, key_len, ...] tensor (the gathered keys under context
// parallelism, the tokens themselves otherwise): positions [key_begin, its last query's + 1) of
// its row, as [1, n, ...]; its queries sit bottom-right of them (kernels/msa.h,
// kernels/attention.h).
Tensor key_view(const Tensor& t, const DocumentSegments& docs, const DocumentSegment& s) {
  return row_range(t, docs, docs.key_len(), s.row, s.key_begin,
                   s.position + s.length() - s.key_begin, "key view");
}

// Runs fn(out) on a key-gradient view: written in place, or, for a repeated document (whose keys an
// earlier segment of the row wrote already; the buffer is zero past them, attention_block.cc),
// into a temporary added to it.
template <class Fn>
void key_gradient(Tensor& view, bool repeat, Fn fn) {
  if (!repeat) return fn(view);
  Tensor part = Tensor::empty(view.shape(), view.dtype(), view.device());
  fn(part);
  add_inplace(view, part);
}

// key_gradient for dK and dV at once: fn(dk_out, dv_out).
template <class Fn>
void key_gradients(Tensor& dk, Tensor& dv, bool repeat, Fn fn) {
  key_gradient(dk, repeat, [&](Tensor& dk_out) {
    key_gradient(dv, repeat, [&](Tensor& dv_out) { fn(dk_out, dv_out); });
  });
}

// 16 bytes of f32 (and 32 of f64): every document's lse block starts aligned.
constexpr int64_t kLseAlign = 4;

int64_t round_up(int64_t n) { return (n + kLseAlign - 1) / kLseAlign * kLseAlign; }

// Document i's [1, H, L] block of a packed lse (see the header).
Tensor lse_view(const Tensor& lse, int64_t offset, int64_t H, const DocumentSegment& s) {
  return lse.slice0(offset, offset + H * s.length()).view({1, H, s.length()});
}

BlockSelection selection_view(const BlockSelection& sel, const DocumentSegments& docs,
                              const DocumentSegment& s) {
  BlockSelection out;
  out.block_size = sel.block_size;
  out.topk = sel.topk;
  if (sel.indices.defined()) {
    out.indices = document_view(sel.indices, docs, s);
    out.counts = document_view(sel.counts, docs, s);
  }
  return out;
}

// The heads of a packed lse for `q` [batch, T, H, d], after checking its size.
int64_t lse_heads(const DocumentSegments& docs, const Tensor& q, const Tensor& lse) {
  const int64_t H = q.size(2);
  int64_t n = 0;
  for (const DocumentSegment& s : docs.segments()) n += round_up(H * s.length());
  MSA_CHECK(lse.ndim() == 1 && lse.numel() == n,
            "packed lse %s does not hold %d heads of %d documents (segmented_lse_empty)",
            lse.describe(), H, docs.segments().size());
  return H;
}

// Calls fn(segment, lse block) for each document, the lse blocks laid out as the header says.
template <class Fn>
void for_each_document(const DocumentSegments& docs, const Tensor& q, const Tensor& lse, Fn fn) {
  const int64_t H = lse_heads(docs, q, lse);
  int64_t offset = 0;
  for (const DocumentSegment& s : docs.segments()) {
    Tensor block = lse_view(lse, offset, H, s);
    fn(s, block);
    offset += round_up(H * s.length());
  }
}

}  // namespace

Tensor segmented_lse_empty(const DocumentSegments* docs, int64_t batch, int64_t H, int64_t T,
                           DType dtype, Device device) {
  if (!runs_per_document(docs)) return Tensor::empty({batch, H, T}, dtype, device);
  MSA_CHECK(docs->batch() == batch && docs->seq_len() == T,
            "document segments for [%d, %d] used with a batch of [%d, %d]", docs->batch(),
            docs->seq_len(), batch, T);
  int64_t n = 0;
  for (const DocumentSegment& s : docs->segments()) n += round_up(H * s.length());
  return Tensor::empty({n}, dtype, device);
}

void segmented_rope_forward(const DocumentSegments* docs, const Tensor& x, const RopeConfig& rope,
                            Tensor& y) {
  if (!runs_per_document(docs))
    return rope_forward(x, rope, y, docs != nullptr ? docs->position_offset() : 0);
  for (const DocumentSegment& s : docs->segments()) {
    Tensor ys = document_view(y, *docs, s);
    rope_forward(document_view(x, *docs, s), rope, ys, docs->rope_offset(s));
  }
}

void segmented_rope_backward(const DocumentSegments* docs, const Tensor& dy, const RopeConfig& rope,
                             Tensor& dx) {
  if (!runs_per_document(docs))
    return rope_backward(dy, rope, dx, docs != nullptr ? docs->position_offset() : 0);
  for (const DocumentSegment& s : docs->segments()) {
    Tensor dxs = document_view(dx, *docs, s);
    rope_backward(document_view(dy, *docs, s), rope, dxs, docs->rope_offset(s));
  }
}

void segmented_attention_forward(const DocumentSegments* docs, const Tensor& q, const Tensor& k,
                                 const Tensor& v, double scale, Tensor& out, Tensor& lse) {
  if (!runs_per_document(docs)) return attention_forward(q, k, v, scale, out, lse);
  for_each_document(*docs, q, lse, [&](const DocumentSegment& s, Tensor& lse_s) {
    Tensor out_s = document_view(out, *docs, s);
    attention_forward(document_view(q, *docs, s), key_view(k, *docs, s), key_view(v, *docs, s),
                      scale, out_s, lse_s);
  });
}

void segmented_attention_backward(const DocumentSegments* docs, const Tensor& dout, const Tensor& q,
                                  const Tensor& k, const Tensor& v, const Tensor& out,
                                  const Tensor& lse, double scale, Tensor& dq, Tensor& dk,
                                  Tensor& dv) {
  if (!runs_per_document(docs))
    return attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv);
  for_each_document(*docs, q, lse, [&](const DocumentSegment& s, Tensor& lse_s) {
    Tensor dq_s = document_view(dq, *docs, s), dk_s = key_view(dk, *docs, s),
           dv_s = key_view(dv, *docs, s);
    key_gradients(dk_s, dv_s, s.repeat, [&](Tensor& dk_out, Tensor& dv_out) {
      attention_backward(document_view(dout, *docs, s), document_view(q, *docs, s),
                         key_view(k, *docs, s), key_view(v, *docs, s), document_view(out, *docs, s),
                         lse_s, scale, dq_s, dk_out, dv_out);
    });
  });
}

void segmented_msa_index_topk(const DocumentSegments* docs, const Tensor& iq, const Tensor& ik,
                              BlockSelection& sel) {
  if (!runs_per_document(docs)) return msa_index_topk(iq, ik, sel);
  for (const DocumentSegment& s : docs->segments()) {
    BlockSelection sel_s = selection_view(sel, *docs, s);
    msa_index_topk(document_view(iq, *docs, s), key_view(ik, *docs, s), sel_s);
  }
}

void segmented_msa_sparse_attention_forward(const DocumentSegments* docs, const Tensor& q,
                                            const Tensor& k, const Tensor& v,
                                            const BlockSelection& sel, double scale, Tensor& out,
                                            Tensor& lse) {
  if (!runs_per_document(docs)) return msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
  for_each_document(*docs, q, lse, [&](const DocumentSegment& s, Tensor& lse_s) {
    Tensor out_s = document_view(out, *docs, s);
    msa_sparse_attention_forward(document_view(q, *docs, s), key_view(k, *docs, s),
                                 key_view(v, *docs, s), selection_view(sel, *docs, s), scale, out_s,
                                 lse_s);
  });
}

void segmented_msa_sparse_attention_backward(const DocumentSegments* docs, const Tensor& dout,
                                             const Tensor& q, const Tensor& k, const Tensor& v,
                                             const Tensor& out, const Tensor& lse,
                                             const BlockSelection& sel, double scale, Tensor& dq,
                                             Tensor& dk, Tensor& dv) {
  if (!runs_per_document(docs))
    return msa_sparse_attention_backward(dout, q, k, v, out, lse, sel, scale, dq, dk, dv);
  for_each_document(*docs, q, lse, [&](const DocumentSegment& s, Tensor& lse_s) {
    Tensor dq_s = document_view(dq, *docs, s), dk_s = key_view(dk, *docs, s),
           dv_s = key_view(dv, *docs, s);
    key_gradients(dk_s, dv_s, s.repeat, [&](Tensor& dk_out, Tensor& dv_out) {
      msa_sparse_attention_backward(document_view(dout, *docs, s), document_view(q, *docs, s),
                                    key_view(k, *docs, s), key_view(v, *docs, s),
                                    document_view(out, *docs, s), lse_s,
                                    selection_view(sel, *docs, s), scale, dq_s, dk_out, dv_out);
    });
  });
}

IndexLossResult segmented_msa_index_loss(const DocumentSegments* docs, IndexLossMode mode,
                                         const Tensor& q, const Tensor& k, const Tensor& lse,
                                         const BlockSelection& sel, const Tensor& iq,
                                         const Tensor& ik, double scale, double weight, Tensor& diq,
                                         Tensor& dik) {
  if (!runs_per_document(docs))
    return msa_index_loss(mode, q, k, lse, sel, iq, ik, scale, weight, diq, dik);
  // Every token has G rows, so a document's share of the rows is its share of the tokens.
  const double all_tokens = static_cast<double>(docs->batch() * docs->seq_len());
  IndexLossResult total;
  double kl_mean = 0;
  for_each_document(*docs, q, lse, [&](const DocumentSegment& s, Tensor& lse_s) {
    const double share = static_cast<double>(s.length()) / all_tokens;
    Tensor diq_s = document_view(diq, *docs, s), dik_s = key_view(dik, *docs, s);
    IndexLossResult r;
    key_gradient(dik_s, s.repeat, [&](Tensor& dik_out) {
      r = msa_index_loss(mode, document_view(q, *docs, s), key_view(k, *docs, s), lse_s,
                         selection_view(sel, *docs, s), document_view(iq, *docs, s),
                         key_view(ik, *docs, s), scale, weight * share, diq_s, dik_out);
    });
    kl_mean += r.loss * share;
    total.n_rows += r.n_rows;
  });
  total.loss = kl_mean;
  return total;
}

OracleRecall segmented_msa_oracle_recall(const DocumentSegments* docs, const Tensor& q,
                                         const Tensor& k, const BlockSelection& sel, double scale,
                                         int64_t query_stride) {
  if (!runs_per_document(docs)) return msa_oracle_recall(q, k, sel, scale, query_stride);
  // The documents' recalls weighted by their sampled rows (the documents' sampled queries).
  OracleRecall sum{};
  for (const DocumentSegment& s : docs->segments()) {
    // The document's sample (its queries sit s.position - s.key_begin into its keys).
    const OracleRecall r = msa_oracle_recall(document_view(q, *docs, s), key_view(k, *docs, s),
                                             selection_view(sel, *docs, s), scale, query_stride);
    const double w = static_cast<double>(r.rows);
    sum.index_recall += w * r.index_recall;
    sum.block_recall += w * r.block_recall;
    sum.index_recall_ceiling += w * r.index_recall_ceiling;
    sum.max_pool_recall_ceiling += w * r.max_pool_recall_ceiling;
    sum.rows += r.rows;
  }
  if (sum.rows == 0) return {1.0, 1.0, 1.0, 1.0, 0};
  const double n = static_cast<double>(sum.rows);
  return {sum.index_recall / n, sum.block_recall / n, sum.index_recall_ceiling / n,
          sum.max_pool_recall_ceiling / n, sum.rows};
}

}  // namespace msa
