#include "model/attention_block.h"

#include <cmath>

#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "model/segmented_kernels.h"

namespace msa {
namespace {

// Statistics (rstd, lse) are f32 on CUDA and the compute dtype on the CPU.
DType stats_dtype(const Tensor& like) { return like.is_cuda() ? DType::kF32 : like.dtype(); }

Tensor bias_or_undefined(ParameterSet& params, const std::string& name) {
  Parameter* p = params.find(name);
  return p ? p->value : Tensor();
}

Tensor grad_or_undefined(ParameterSet& params, const std::string& name) {
  Parameter* p = params.find(name);
  return p ? p->grad : Tensor();
}

// RoPE (or, inverse, its transpose: gradients) at the tokens' positions: each document's own with
// packed documents, p0 onward otherwise (a cp shard's first position). y may alias x.
void rope_at_positions(const DocumentSegments* docs, const Tensor& x, const RopeConfig& rope,
                       int64_t p0, bool inverse, Tensor& y) {
  if (docs != nullptr) {
    if (inverse)
      segmented_rope_backward(docs, x, rope, y);
    else
      segmented_rope_forward(docs, x, rope, y);
  } else if (inverse) {
    rope_backward(x, rope, y, p0);
  } else {
    rope_forward(x, rope, y, p0);
  }
}

// The option of an index branch with RoPE (msa.index_rotary_dim > 0, not the paper's): rotates
// q^I [batch, T, G, d_I] and k^I [batch, T, d_I] in place, or their gradients by the transpose.
void rotate_index_branch(const DocumentSegments* docs, const RopeConfig& rope, int64_t p0,
                         Tensor& q, Tensor& k, bool inverse) {
  Tensor k4 = k.view({q.size(0), q.size(1), 1, q.size(3)});
  rope_at_positions(docs, q, rope, p0, inverse, q);
  rope_at_positions(docs, k4, rope, p0, inverse, k4);
}

}  // namespace

void attention_block_forward(const ModelConfig& c, int layer, ParameterSet& params, const Tensor& x,
                             int64_t batch, int64_t T, const AttentionBlockOptions& options,
                             AttentionActivations& act, Tensor& y, const NormedInput* normed) {
  const int64_t N = batch * T, D = c.d_model, H = c.n_heads, G = c.n_kv_heads, d = c.head_dim;
  const DType dt = x.dtype(), st = stats_dtype(x);
  const Device dev = x.device();
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  act.documents = options.documents;
  const DocumentSegments* docs = act.documents.get();

  check_shape(x, {N, D}, "attention_block_forward: x");
  NormedInput in =
      normalize_block_input(x, params.at(layer_param_name(layer, "attn_norm.weight")).value,
                            c.norm_eps, normed, "attention_block_forward");
  act.xn = std::move(in.xn);
  act.rstd = std::move(in.rstd);

  act.q = Tensor::empty({N, H * d}, dt, dev);
  act.k = Tensor::empty({N, G * d}, dt, dev);
  act.v = Tensor::empty({N, G * d}, dt, dev);
  linear_forward(act.xn, params.at(layer_param_name(layer, "attn.wq.weight")).value,
                 bias_or_undefined(params, layer_param_name(layer, "attn.wq.bias")), act.q);
  linear_forward(act.xn, params.at(layer_param_name(layer, "attn.wk.weight")).value,
                 bias_or_undefined(params, layer_param_name(layer, "attn.wk.bias")), act.k);
  linear_forward(act.xn, params.at(layer_param_name(layer, "attn.wv.weight")).value,
                 bias_or_undefined(params, layer_param_name(layer, "attn.wv.bias")), act.v);

  Tensor q_pre = act.q, k_pre = act.k;
  if (c.qk_norm) {
    act.qn = Tensor::empty({N * H, d}, dt, dev);
    act.kn = Tensor::empty({N * G, d}, dt, dev);
    act.rstd_q = Tensor::empty({N * H}, st, dev);
    act.rstd_k = Tensor::empty({N * G}, st, dev);
    rmsnorm_forward(act.q.view({N * H, d}),
                    params.at(layer_param_name(layer, "attn.q_norm.weight")).value, c.norm_eps,
                    act.qn, act.rstd_q);
    rmsnorm_forward(act.k.view({N * G, d}),
                    params.at(layer_param_name(layer, "attn.k_norm.weight")).value, c.norm_eps,
                    act.kn, act.rstd_k);
    q_pre = act.qn;
    k_pre = act.kn;
  }
  const ContextParallel& cp = options.cp;
  const int64_t p0 = cp.position_offset(T);  // position of this rank's first token
  act.q_rope = Tensor::empty({batch, T, H, d}, dt, dev);
  act.k_rope = Tensor::empty({batch, T, G, d}, dt, dev);
  rope_at_positions(docs, q_pre.view({batch, T, H, d}), c.rope(), p0, false, act.q_rope);
  rope_at_positions(docs, k_pre.view({batch, T, G, d}), c.rope(), p0, false, act.k_rope);
  act.k_ctx = cp_gather_keys(cp, act.k_rope);
  act.v_ctx = cp_gather_keys(cp, act.v.view({batch, T, G, d}));
  const Tensor& k4 = act.k_ctx;
  const Tensor& v4 = act.v_ctx;

  act.att = Tensor::empty({batch, T, H, d}, dt, dev);
  act.lse = segmented_lse_empty(docs, batch, H, T, st, dev);
  const bool reuse = options.reuse_index && c.layer_kind(layer) == AttentionKind::kMsa;
  if (!reuse) {
    act.selection.reset();
    act.dwiq = Tensor();
    act.dwik = Tensor();
  }
  act.sparse_attention = false;
  act.index_recall = -1;
  act.block_recall = -1;
  act.index_recall_ceiling = -1;
  act.max_pool_recall_ceiling = -1;
  act.answer_index_recall = -1;
  act.answer_block_recall = -1;
  act.answer_index_recall_ceiling = -1;
  act.answer_key_selected = -1;

  if (c.layer_kind(layer) == AttentionKind::kDense) {
    segmented_attention_forward(docs, act.q_rope, k4, v4, scale, act.att, act.lse);
  } else if (reuse) {
    // Recomputation: the selection and the index branch's gradients are this step's already.
    const bool sparse = options.msa_mode == MsaMode::kSparse;
    if (sparse) {
      MSA_CHECK(act.selection.has_value(),
                "layer %d: recomputation without the forward's selection", layer);
      act.sparse_attention = true;
      segmented_msa_sparse_attention_forward(docs, act.q_rope, k4, v4, *act.selection, scale,
                                             act.att, act.lse);
    } else {
      segmented_attention_forward(docs, act.q_rope, k4, v4, scale, act.att, act.lse);
    }
  } else {
    const int dI = c.msa.index_dim;
    Tensor iq = Tensor::empty({batch, T, G, dI}, dt, dev);
    Tensor ik = Tensor::empty({batch, T, dI}, dt, dev);
    // The index branch reads xn as a constant: nothing here records a path back into it.
    Tensor iq2 = iq.view({N, G * dI}), ik2 = ik.view({N, dI});
    Parameter& wiq = params.at(layer_param_name(layer, "attn.index_wq.weight"));
    Parameter& wik = params.at(layer_param_name(layer, "attn.index_wk.weight"));
    linear_forward(act.xn, wiq.value, Tensor(), iq2);
    linear_forward(act.xn, wik.value, Tensor(), ik2);
    const bool index_rope = c.msa.index_rotary_dim > 0;
    if (index_rope) rotate_index_branch(docs, c.index_rope(), p0, iq, ik, /*inverse=*/false);
    // Context parallelism: the shared index keys of every shard up to this rank's end.
    const Tensor ik_ctx = cp_gather_keys(cp, ik);
    const bool sparse = options.msa_mode == MsaMode::kSparse;
    const bool measure_recall = options.recall_query_stride > 0;
    const bool measure_answers = !options.answer_positions.empty();
    if (sparse || measure_recall || measure_answers) {
      act.selection = BlockSelection::allocate(batch, T, G, c.msa.block_size, c.msa.topk, dev);
      segmented_msa_index_topk(docs, iq, ik_ctx, *act.selection);
    }

    // Gradients of the index loss: f32 on CUDA (bf16 activations), the compute dtype on the CPU.
    const DType gt = dt == DType::kBF16 ? DType::kF32 : dt;
    Tensor diq = Tensor::empty(iq.shape(), gt, dev);
    // Per-document segments under cp (packed documents, the zig-zag layout): keys of documents
    // that end before this shard get no gradient from its queries (no kernel writes them), and a
    // document's second segment adds to its first's.
    Tensor dik = docs != nullptr && cp.enabled() ? Tensor::zeros(ik_ctx.shape(), gt, dev)
                                                 : Tensor::empty(ik_ctx.shape(), gt, dev);
    IndexLossResult r;
    if (sparse) {
      // Teacher: the sparse main branch's own probabilities over the selected tokens (its lse).
      act.sparse_attention = true;
      segmented_msa_sparse_attention_forward(docs, act.q_rope, k4, v4, *act.selection, scale,
                                             act.att, act.lse);
      r = segmented_msa_index_loss(docs, IndexLossMode::kSparse, act.q_rope, k4, act.lse,
                                   *act.selection, iq, ik_ctx, scale, 1.0, diq, dik);
    } else {
      // Warm-up: dense attention, teacher over every causal token (the selection is not used).
      segmented_attention_forward(docs, act.q_rope, k4, v4, scale, act.att, act.lse);
      BlockSelection unused;  // sizes only
      unused.block_size = c.msa.block_size;
      unused.topk = c.msa.topk;
      r = segmented_msa_index_loss(docs, IndexLossMode::kDenseTarget, act.q_rope, k4, act.lse,
                                   unused, iq, ik_ctx, scale, 1.0, diq, dik);
    }
    act.index_loss = r.loss;
    act.index_rows = r.n_rows;
    if (options.compute_index_grads) {
      // Context parallelism: every rank's queries' gradient for this rank's index keys.
      dik = cp_reduce_scatter_keys(cp, dik);
      // The weight gradients now, while xn is here: the backward only scales and adds them.
      if (diq.dtype() != dt) {  // CUDA: f32 gradients, bf16 matmul inputs
        diq = diq.to(dt);
        dik = dik.to(dt);
      }
      if (index_rope) rotate_index_branch(docs, c.index_rope(), p0, diq, dik, /*inverse=*/true);
      Tensor none;
      act.dwiq = Tensor::zeros(wiq.grad.shape(), wiq.grad.dtype(), dev);
      act.dwik = Tensor::zeros(wik.grad.shape(), wik.grad.dtype(), dev);
      linear_backward(diq.view({N, G * dI}), act.xn, wiq.value, none, act.dwiq, none);
      // W_IK [d_I, D] is shared by the groups: with tensor parallelism this is this rank's
      // groups' part of its gradient (the transformer sums it over tp).
      linear_backward(dik.view({N, dI}), act.xn, wik.value, none, act.dwik, none);
    }
    if (measure_recall) {
      const OracleRecall oracle = segmented_msa_oracle_recall(docs, act.q_rope, k4, *act.selection,
                                                              scale, options.recall_query_stride);
      act.index_recall = oracle.index_recall;
      act.block_recall = oracle.block_recall;
      act.index_recall_ceiling = oracle.index_recall_ceiling;
      act.max_pool_recall_ceiling = oracle.max_pool_recall_ceiling;
      act.recall_rows = static_cast<double>(oracle.rows);
    }
    if (measure_answers) {
      // Whole rows: the callers (retrieval evaluation) run neither packed documents nor cp.
      MSA_CHECK(!runs_per_document(docs) && !cp.enabled(),
                "answer-position recall with packed documents or context parallelism");
      const OracleRecall oracle =
          msa_oracle_recall(act.q_rope, k4, *act.selection, scale, options.answer_positions);
      act.answer_index_recall = oracle.index_recall;
      act.answer_block_recall = oracle.block_recall;
      act.answer_index_recall_ceiling = oracle.index_recall_ceiling;
      if (!options.answer_key_positions.empty())
        act.answer_key_selected = msa_selected_key_fraction(
            *act.selection, options.answer_positions, options.answer_key_positions);
    }
  }

  linear_forward(act.att.view({N, H * d}),
                 params.at(layer_param_name(layer, "attn.wo.weight")).value, Tensor(), y);
}

void attention_block_backward(const ModelConfig& c, int layer, ParameterSet& params,
                              const Tensor& x, const Tensor& dy, int64_t batch, int64_t T,
                              AttentionActivations& act, bool backbone, double index_weight,
                              Tensor& dx, const ContextParallel& cp, const Tensor& skip_grad) {
  const int64_t N = batch * T, D = c.d_model, H = c.n_heads, G = c.n_kv_heads, d = c.head_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));

  // Index branch: its own gradients only (the input xn is detached: no dx contribution).
  if (c.layer_kind(layer) == AttentionKind::kMsa && act.dwiq.defined() && index_weight != 0) {
    // Consumed here (scaled in place): a second backward needs a new forward.
    Tensor dwiq = std::move(act.dwiq), dwik = std::move(act.dwik);
    act.dwiq = Tensor();
    act.dwik = Tensor();
    scale_inplace(dwiq, index_weight);
    scale_inplace(dwik, index_weight);
    add_inplace(params.at(layer_param_name(layer, "attn.index_wq.weight")).grad, dwiq);
    add_inplace(params.at(layer_param_name(layer, "attn.index_wk.weight")).grad, dwik);
  }
  if (!backbone) {
    dx = Tensor();
    return;
  }

  Tensor none;
  Tensor datt = Tensor::empty({N, H * d}, dt, dev);
  linear_backward(dy, act.att.view({N, H * d}),
                  params.at(layer_param_name(layer, "attn.wo.weight")).value, datt,
                  params.at(layer_param_name(layer, "attn.wo.weight")).grad, none);

  Tensor dq_rope = Tensor::empty({batch, T, H, d}, dt, dev);
  const DocumentSegments* docs = act.documents.get();
  // Per-document segments under cp (packed documents, zig-zag): keys no kernel writes, and key
  // gradients that a document's second segment adds to.
  const bool zero_keys = docs != nullptr && cp.enabled();
  Tensor dk_ctx = zero_keys ? Tensor::zeros(act.k_ctx.shape(), dt, dev)
                            : Tensor::empty(act.k_ctx.shape(), dt, dev);
  Tensor dv_ctx = zero_keys ? Tensor::zeros(act.v_ctx.shape(), dt, dev)
                            : Tensor::empty(act.v_ctx.shape(), dt, dev);
  const Tensor datt4 = datt.view({batch, T, H, d});
  if (act.sparse_attention) {
    segmented_msa_sparse_attention_backward(docs, datt4, act.q_rope, act.k_ctx, act.v_ctx, act.att,
                                            act.lse, *act.selection, scale, dq_rope, dk_ctx,
                                            dv_ctx);
  } else {
    segmented_attention_backward(docs, datt4, act.q_rope, act.k_ctx, act.v_ctx, act.att, act.lse,
                                 scale, dq_rope, dk_ctx, dv_ctx);
  }
  // Context parallelism: every rank's queries' gradients for this rank's keys and values.
  Tensor dk_rope = cp_reduce_scatter_keys(cp, dk_ctx);
  const Tensor dv = cp_reduce_scatter_keys(cp, dv_ctx);

  // RoPE backward in place, then the q/k norm.
  const int64_t p0 = cp.position_offset(T);
  rope_at_positions(docs, dq_rope, c.rope(), p0, /*inverse=*/true, dq_rope);
  rope_at_positions(docs, dk_rope, c.rope(), p0, /*inverse=*/true, dk_rope);
  Tensor dq = dq_rope.view({N, H * d}), dk = dk_rope.view({N, G * d});
  if (c.qk_norm) {
    Tensor dq_pre = Tensor::empty({N * H, d}, dt, dev);
    Tensor dk_pre = Tensor::empty({N * G, d}, dt, dev);
    rmsnorm_backward(dq_rope.view({N * H, d}), act.q.view({N * H, d}),
                     params.at(layer_param_name(layer, "attn.q_norm.weight")).value, act.rstd_q,
                     dq_pre, params.at(layer_param_name(layer, "attn.q_norm.weight")).grad);
    rmsnorm_backward(dk_rope.view({N * G, d}), act.k.view({N * G, d}),
                     params.at(layer_param_name(layer, "attn.k_norm.weight")).value, act.rstd_k,
                     dk_pre, params.at(layer_param_name(layer, "attn.k_norm.weight")).grad);
    dq = dq_pre.view({N, H * d});
    dk = dk_pre.view({N, G * d});
  }

  // Projections: dxn = dq Wq + dk Wk + dv Wv, the sum taken inside the GEMMs.
  Tensor dxn = Tensor::empty({N, D}, dt, dev);
  Tensor dbq = grad_or_undefined(params, layer_param_name(layer, "attn.wq.bias"));
  Tensor dbk = grad_or_undefined(params, layer_param_name(layer, "attn.wk.bias"));
  Tensor dbv = grad_or_undefined(params, layer_param_name(layer, "attn.wv.bias"));
  linear_backward(dq, act.xn, params.at(layer_param_name(layer, "attn.wq.weight")).value, dxn,
                  params.at(layer_param_name(layer, "attn.wq.weight")).grad, dbq);
  linear_backward(dk, act.xn, params.at(layer_param_name(layer, "attn.wk.weight")).value, dxn,
                  params.at(layer_param_name(layer, "attn.wk.weight")).grad, dbk,
                  DxWrite::kAccumulate);
  linear_backward(
      dv.view({N, G * d}), act.xn, params.at(layer_param_name(layer, "attn.wv.weight")).value, dxn,
      params.at(layer_param_name(layer, "attn.wv.weight")).grad, dbv, DxWrite::kAccumulate);

  dx = Tensor::empty({N, D}, dt, dev);
  rmsnorm_backward(dxn, x, params.at(layer_param_name(layer, "attn_norm.weight")).value, act.rstd,
                   dx, params.at(layer_param_name(layer, "attn_norm.weight")).grad, skip_grad);
}

}  // namespace msa
