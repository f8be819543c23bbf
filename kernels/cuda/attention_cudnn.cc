// Dense causal GQA flash attention through cuDNN 9's fused attention engine, built with the
// backend (graph) C API: the cudnn_frontend header library is not installed here, and we vendor
// no third-party code. The backend recognizes scaled-dot-product attention as a graph of
// primitive operations (the same graph the frontend's sdpa nodes lower to):
//   forward:  S = Q K^T; S *= scale; causal select (row + Tk - Tq >= col, else -FLT_MAX);
//             M = rowmax S; E = exp(S - M); Z = rowsum E; lse = M + log Z; P = E / Z; O = P V
//   backward: Dsum = rowsum(dO * O); S as above; P = exp(S - lse); dV = P^T dO;
//             dS = P * (dO V^T - Dsum) * scale; dK = dS^T Q; dQ = dS K (through an f32
//             accumulator in the workspace)
// GQA needs no copies: K and V are described with G heads and the engine broadcasts them; in the
// backward dK and dV are reduced over each group's query heads inside the graph.
//
// Layouts are BSHD through strides: q [b, T, H, d] is the tensor (b, H, T, d) with strides
// (T*H*d, d, H*d, 1); lse [b, H, T] is (b, H, T, 1). Built plans are cached per shape.
//
// Fewer queries than keys (Tq < Tk, context parallelism): Q, O, dO, dQ and lse have Tq rows, K, V,
// dK and dV Tk, and the causal mask is bottom-right aligned: query row t sits at position
// Tk - Tq + t. The mask then compares (row + Tk) - Tq >= col, the two int32 pass-by-value scalars
// added to the GEN_INDEX row index exactly as cudnn-frontend lowers its causal_mask_bottom_right
// (diagonal alignment BOTTOM_RIGHT, right bound 0) for cuDNN before 9.21; cuDNN 9.6 and later take
// any Tq <= Tk for it. With Tq == Tk the graph is the plain top-left one (no extra operations).
//
// Shapes cuDNN refuses: on Hopper with cuDNN 9 the fused engine takes bf16 with head_dim a
// multiple of 8 up to 128 (256 forward on newer 9.x) and any T; when no engine accepts a graph
// (an older library, an odd head_dim, an unsupported GPU) the build returns false and the caller
// runs the hand-written kernels of attention_fallback.cu instead (once-per-shape message on
// stderr naming cuDNN's reason).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_context.h"

namespace msa::cuda {
namespace {

// ---- a thin RAII layer over backend descriptors, recording the first failure ---------------

class Builder;

class Desc {
 public:
  Desc() = default;
  Desc(Builder& b, cudnnBackendDescriptorType_t type);
  ~Desc() {
    if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc(Desc&& o) noexcept : d_(o.d_), b_(o.b_) { o.d_ = nullptr; }
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    std::swap(b_, o.b_);
    return *this;
  }
  cudnnBackendDescriptor_t get() const { return d_; }
  // Takes ownership of a descriptor created outside (an execution plan).
  void adopt(cudnnBackendDescriptor_t raw) {
    if (d_ != nullptr) cudnnBackendDestroyDescriptor(d_);
    d_ = raw;
  }

  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
            const void* value, const char* what);
  Desc& set_i64(cudnnBackendAttributeName_t name, int64_t v, const char* what) {
    return set(name, CUDNN_TYPE_INT64, 1, &v, what);
  }
  Desc& set_dtype(cudnnBackendAttributeName_t name, cudnnDataType_t v, const char* what) {
    return set(name, CUDNN_TYPE_DATA_TYPE, 1, &v, what);
  }
  Desc& set_desc(cudnnBackendAttributeName_t name, const Desc& v, const char* what) {
    cudnnBackendDescriptor_t raw = v.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw, what);
  }
  bool finalize(const char* what);

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  Builder* b_ = nullptr;
};

// Collects the descriptors of one graph and the first error (call name + cuDNN's message).
class Builder {
 public:
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  void fail(cudnnStatus_t st, const char* what) {
    if (!error_.empty()) return;
    char msg[512] = {0};
    cudnnGetLastErrorString(msg, sizeof(msg));
    error_ = absl::StrFormat("%s: %s (%s)", what, cudnnGetErrorString(st), msg);
  }

  // A tensor: 4-D dims/strides, `uid` unique within the graph.
  Desc& tensor(int64_t uid, cudnnDataType_t dtype, const std::vector<int64_t>& dims,
               const std::vector<int64_t>& strides, bool is_virtual, bool by_value = false,
               bool reorder_f16x16 = false) {
    Desc t(*this, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t n = static_cast<int64_t>(dims.size()), align = 16;
    t.set_dtype(CUDNN_ATTR_TENSOR_DATA_TYPE, dtype, "tensor data type")
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, n, dims.data(), "tensor dims")
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, n, strides.data(), "tensor strides")
        .set_i64(CUDNN_ATTR_TENSOR_UNIQUE_ID, uid, "tensor uid")
        .set_i64(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, align, "tensor alignment")
        .set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, "tensor virtual");
    if (by_value)
      t.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
    if (reorder_f16x16) {
      cudnnBackendTensorReordering_t mode = CUDNN_TENSOR_REORDERING_F16x16;
      t.set(CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, 1, &mode,
            "tensor reordering");
    }
    t.finalize("tensor");
    return keep(std::move(t));
  }
  // A virtual f32 (or other) intermediate, uid assigned here.
  Desc& virt(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
             cudnnDataType_t dtype = CUDNN_DATA_FLOAT) {
    return tensor(next_virtual_uid_++, dtype, dims, strides, /*is_virtual=*/true);
  }
  // A host scalar passed by value at execution.
  Desc& scalar(int64_t uid, cudnnDataType_t dtype = CUDNN_DATA_FLOAT) {
    return tensor(uid, dtype, {1, 1, 1, 1}, {1, 1, 1, 1}, false, /*by_value=*/true);
  }

  // y = mode(x [, b [, t]]) with math precision `prec`; axis for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, const Desc& x, const Desc* b, const Desc* t,
                 const Desc& y, cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    Desc pw(*this, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode")
        .set_dtype(CUDNN_ATTR_POINTWISE_MATH_PREC, prec, "pointwise precision");
    if (axis >= 0) pw.set_i64(CUDNN_ATTR_POINTWISE_AXIS, axis, "pointwise axis");
    pw.finalize("pointwise descriptor");
    Desc op(*this, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pointwise op desc")
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pointwise x");
    if (b != nullptr) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b, "pointwise b");
    if (t != nullptr) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, *t, "pointwise t");
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pointwise y");
    op.finalize("pointwise op");
    keep(std::move(pw));
    ops_.push_back(&keep(std::move(op)));
  }
  void matmul(const Desc& a, const Desc& b, const Desc& c) {
    Desc mm(*this, CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    mm.set_dtype(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT, "matmul compute type");
    mm.finalize("matmul descriptor");
    Desc op(*this, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, "matmul a")
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, "matmul b")
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, "matmul c")
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, mm, "matmul desc");
    op.finalize("matmul op");
    keep(std::move(mm));
    ops_.push_back(&keep(std::move(op)));
  }
  void reduction(cudnnReduceTensorOp_t mode, const Desc& x, const Desc& y) {
    Desc red(*this, CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    red.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode,
            "reduction operator")
        .set_dtype(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT, "reduction compute type");
    red.finalize("reduction descriptor");
    Desc op(*this, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, "reduction x")
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, "reduction y")
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, red, "reduction desc");
    op.finalize("reduction op");
    keep(std::move(red));
    ops_.push_back(&keep(std::move(op)));
  }
  void reshape(const Desc& x, const Desc& y) {
    Desc op(*this, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, "reshape x")
        .set_desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, "reshape y");
    op.finalize("reshape op");
    ops_.push_back(&keep(std::move(op)));
  }

  // Finalizes the operation graph and the first execution plan an engine accepts.
  bool build_plan(Desc& plan_out, int64_t* workspace_bytes) {
    if (!ok()) return false;
    cudnnHandle_t handle = cudnn_handle();
    Desc graph(*this, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    std::vector<cudnnBackendDescriptor_t> raw;
    for (Desc* op : ops_) raw.push_back(op->get());
    graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
              static_cast<int64_t>(raw.size()), raw.data(), "graph ops")
        .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "graph handle");
    if (!graph.finalize("operation graph")) return false;

    Desc heur(*this, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph")
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    if (!heur.finalize("engine heuristics")) return false;
    int64_t count = 0;
    cudnnStatus_t st = cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
    if (st != CUDNN_STATUS_SUCCESS) {
      fail(st, "cudnnBackendGetAttribute(ENGINEHEUR_RESULTS count)");
      return false;
    }
    if (count == 0) {
      error_ = "engine heuristics: no engine supports this attention graph";
      return false;
    }
    std::vector<Desc> cfgs;
    std::vector<cudnnBackendDescriptor_t> cfg_raw;
    for (int64_t i = 0; i < count; ++i) {
      cfgs.emplace_back(*this, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      cfg_raw.push_back(cfgs.back().get());
    }
    int64_t returned = 0;
    st = cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                  CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned, cfg_raw.data());
    if (st != CUDNN_STATUS_SUCCESS) {
      fail(st, "cudnnBackendGetAttribute(ENGINEHEUR_RESULTS)");
      return false;
    }
    std::string last_error;
    for (int64_t i = 0; i < returned; ++i) {
      cudnnBackendDescriptor_t plan = nullptr;
      if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) !=
          CUDNN_STATUS_SUCCESS)
        continue;
      cudnnBackendDescriptor_t cfg = cfg_raw[i];
      bool good =
          cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                   &handle) == CUDNN_STATUS_SUCCESS &&
          cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg) == CUDNN_STATUS_SUCCESS;
      if (good) {
        st = cudnnBackendFinalize(plan);
        good = st == CUDNN_STATUS_SUCCESS;
        if (!good) {
          char msg[512] = {0};
          cudnnGetLastErrorString(msg, sizeof(msg));
          last_error = absl::StrFormat("%s (%s)", cudnnGetErrorString(st), msg);
        }
      }
      int64_t ws = 0, n = 0;
      if (good)
        good = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                        CUDNN_TYPE_INT64, 1, &n, &ws) == CUDNN_STATUS_SUCCESS;
      if (!good) {
        cudnnBackendDestroyDescriptor(plan);
        continue;
      }
      plan_out.adopt(plan);
      *workspace_bytes = ws;
      return true;
    }
    error_ = absl::StrFormat("execution plan: none of %d engine configs finalized; last: %s",
                             returned, last_error);
    return false;
  }

 private:
  friend class Desc;
  Desc& keep(Desc&& d) {
    owned_.push_back(std::make_unique<Desc>(std::move(d)));
    return *owned_.back();
  }
  std::string error_;
  int64_t next_virtual_uid_ = 1000;
  std::vector<std::unique_ptr<Desc>> owned_;
  std::vector<Desc*> ops_;
};

Desc::Desc(Builder& b, cudnnBackendDescriptorType_t type) : b_(&b) {
  cudnnStatus_t st = cudnnBackendCreateDescriptor(type, &d_);
  if (st != CUDNN_STATUS_SUCCESS) {
    d_ = nullptr;
    b.fail(st, "cudnnBackendCreateDescriptor");
  }
}

Desc& Desc::set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                const void* value, const char* what) {
  if (b_ == nullptr || !b_->ok() || d_ == nullptr) return *this;
  cudnnStatus_t st = cudnnBackendSetAttribute(d_, name, type, count, value);
  if (st != CUDNN_STATUS_SUCCESS) b_->fail(st, what);
  return *this;
}

bool Desc::finalize(const char* what) {
  if (b_ == nullptr || !b_->ok() || d_ == nullptr) return false;
  cudnnStatus_t st = cudnnBackendFinalize(d_);
  if (st != CUDNN_STATUS_SUCCESS) {
    b_->fail(st, what);
    return false;
  }
  return true;
}

}  // namespace

// ---- the attention graphs ------------------------------------------------------------------

namespace {

enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kdO, kdQ, kdK, kdV, kScale, kOne, kLowest, kdQAccum, kSeqKv, kSeqQ
};

struct Plan {
  // Owns the builder (the plan's descriptors reference its tensors).
  std::unique_ptr<Builder> builder;
  std::unique_ptr<Desc> plan;
  int64_t workspace = 0;
  int64_t dq_accum_bytes = 0;  // backward: the f32 dQ accumulator (an allocator tensor per call)
};

// Tq query tokens, Tk key tokens (Tq <= Tk; query t at position Tk - Tq + t).
struct Shape4 {
  int64_t b, Tq, Tk, H, G, d;
  bool bottom_right() const { return Tq != Tk; }
  bool operator<(const Shape4& o) const {
    return std::tie(b, Tq, Tk, H, G, d) < std::tie(o.b, o.Tq, o.Tk, o.H, o.G, o.d);
  }
};

std::vector<int64_t> bhsd_strides(int64_t T, int64_t heads, int64_t d) {
  return {T * heads * d, d, heads * d, 1};  // (b, h, t, i) of a [b, T, heads, d] tensor
}

// Score-shaped [b, H, Tq, Tk] dims and packed strides.
std::vector<int64_t> score_dims(const Shape4& s) { return {s.b, s.H, s.Tq, s.Tk}; }
std::vector<int64_t> score_strides(const Shape4& s) {
  return {s.H * s.Tq * s.Tk, s.Tq * s.Tk, s.Tk, 1};
}

// Q [b,H,Tq,d], K^T [b,G,d,Tk], V [b,G,Tk,d]: the shared score chain S = mask(scale * Q K^T).
Desc& build_scores(Builder& g, const Shape4& s, const Desc& q, const Desc& kt, const Desc& scale) {
  const std::vector<int64_t> sdims = score_dims(s), sstr = score_strides(s);
  Desc& qk = g.virt(sdims, sstr);
  g.matmul(q, kt, qk);
  Desc& scaled = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_MUL, qk, &scale, nullptr, scaled);
  Desc* row = &g.virt(sdims, sstr, CUDNN_DATA_INT32);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, scaled, nullptr, nullptr, *row, CUDNN_DATA_INT32, 2);
  if (s.bottom_right()) {
    // row + Tk - Tq: the query's position (cudnn-frontend's bottom-right diagonal alignment).
    Desc& seq_kv = g.scalar(kSeqKv, CUDNN_DATA_INT32);
    Desc& row_kv = g.virt(sdims, sstr, CUDNN_DATA_INT32);
    g.pointwise(CUDNN_POINTWISE_ADD, *row, &seq_kv, nullptr, row_kv, CUDNN_DATA_INT32);
    Desc& seq_q = g.scalar(kSeqQ, CUDNN_DATA_INT32);
    Desc& pos = g.virt(sdims, sstr, CUDNN_DATA_INT32);
    g.pointwise(CUDNN_POINTWISE_SUB, row_kv, &seq_q, nullptr, pos, CUDNN_DATA_INT32);
    row = &pos;
  }
  Desc& col = g.virt(sdims, sstr, CUDNN_DATA_INT32);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, scaled, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
  Desc& keep = g.virt(sdims, sstr, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, *row, &col, nullptr, keep, CUDNN_DATA_BOOLEAN);
  Desc& lowest = g.scalar(kLowest);
  Desc& masked = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, scaled, &lowest, &keep, masked);
  return masked;
}

std::unique_ptr<Plan> build_forward(const Shape4& s) {
  auto p = std::make_unique<Plan>();
  p->builder = std::make_unique<Builder>();
  Builder& g = *p->builder;
  Desc& q =
      g.tensor(kQ, CUDNN_DATA_BFLOAT16, {s.b, s.H, s.Tq, s.d}, bhsd_strides(s.Tq, s.H, s.d), false);
  // K^T: (b, g, i, t) of k [b, Tk, G, d].
  Desc& kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, {s.b, s.G, s.d, s.Tk},
                      {s.Tk * s.G * s.d, s.d, 1, s.G * s.d}, false);
  Desc& v =
      g.tensor(kV, CUDNN_DATA_BFLOAT16, {s.b, s.G, s.Tk, s.d}, bhsd_strides(s.Tk, s.G, s.d), false);
  Desc& o =
      g.tensor(kO, CUDNN_DATA_BFLOAT16, {s.b, s.H, s.Tq, s.d}, bhsd_strides(s.Tq, s.H, s.d), false);
  const std::vector<int64_t> rdims{s.b, s.H, s.Tq, 1}, rstr{s.H * s.Tq, s.Tq, 1, 1};
  Desc& stats = g.tensor(kStats, CUDNN_DATA_FLOAT, rdims, rstr, false);
  Desc& scale = g.scalar(kScale);

  Desc& masked = build_scores(g, s, q, kt, scale);
  const std::vector<int64_t> sdims = score_dims(s), sstr = score_strides(s);
  Desc& mx = g.virt(rdims, rstr);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, mx);
  Desc& sub = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_SUB, masked, &mx, nullptr, sub);
  Desc& ex = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_EXP, sub, nullptr, nullptr, ex);
  Desc& sum = g.virt(rdims, rstr);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, ex, sum);
  Desc& lg = g.virt(rdims, rstr);
  g.pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, nullptr, lg);
  g.pointwise(CUDNN_POINTWISE_ADD, mx, &lg, nullptr, stats);
  // P goes into the second matmul as bf16 (the engine's A type must be the I/O type).
  Desc& prob = g.virt(sdims, sstr, CUDNN_DATA_BFLOAT16);
  g.pointwise(CUDNN_POINTWISE_DIV, ex, &sum, nullptr, prob);
  g.matmul(prob, v, o);

  p->plan = std::make_unique<Desc>();
  g.build_plan(*p->plan, &p->workspace);
  return p;
}

std::unique_ptr<Plan> build_backward(const Shape4& s) {
  auto p = std::make_unique<Plan>();
  p->builder = std::make_unique<Builder>();
  Builder& g = *p->builder;
  const auto qs = bhsd_strides(s.Tq, s.H, s.d), ks = bhsd_strides(s.Tk, s.G, s.d);
  Desc& q = g.tensor(kQ, CUDNN_DATA_BFLOAT16, {s.b, s.H, s.Tq, s.d}, qs, false);
  Desc& kt = g.tensor(kK, CUDNN_DATA_BFLOAT16, {s.b, s.G, s.d, s.Tk},
                      {s.Tk * s.G * s.d, s.d, 1, s.G * s.d}, false);
  Desc& vt = g.tensor(kV, CUDNN_DATA_BFLOAT16, {s.b, s.G, s.d, s.Tk},
                      {s.Tk * s.G * s.d, s.d, 1, s.G * s.d}, false);
  Desc& o = g.tensor(kO, CUDNN_DATA_BFLOAT16, {s.b, s.H, s.Tq, s.d}, qs, false);
  Desc& dout = g.tensor(kdO, CUDNN_DATA_BFLOAT16, {s.b, s.H, s.Tq, s.d}, qs, false);
  const std::vector<int64_t> rdims{s.b, s.H, s.Tq, 1}, rstr{s.H * s.Tq, s.Tq, 1, 1};
  Desc& stats = g.tensor(kStats, CUDNN_DATA_FLOAT, rdims, rstr, false);
  Desc& dq = g.tensor(kdQ, CUDNN_DATA_BFLOAT16, {s.b, s.H, s.Tq, s.d}, qs, false);
  Desc& dk = g.tensor(kdK, CUDNN_DATA_BFLOAT16, {s.b, s.G, s.Tk, s.d}, ks, false);
  Desc& dv = g.tensor(kdV, CUDNN_DATA_BFLOAT16, {s.b, s.G, s.Tk, s.d}, ks, false);
  Desc& scale = g.scalar(kScale);
  Desc& one = g.scalar(kOne);
  const std::vector<int64_t> sdims = score_dims(s), sstr = score_strides(s);
  // Transposed [b, H, Tk, Tq] view of a score-shaped intermediate.
  const std::vector<int64_t> tdims{s.b, s.H, s.Tk, s.Tq},
      tstr{s.H * s.Tq * s.Tk, s.Tq * s.Tk, 1, s.Tk};

  // Dsum = rowsum(dO * O).
  Desc& dOO = g.virt({s.b, s.H, s.Tq, s.d}, {s.H * s.Tq * s.d, s.Tq * s.d, s.H * s.d, 1});
  g.pointwise(CUDNN_POINTWISE_MUL, dout, &o, nullptr, dOO);
  Desc& dsum0 = g.virt(rdims, rstr);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, dOO, dsum0);
  Desc& dsum = g.virt(rdims, rstr);
  g.pointwise(CUDNN_POINTWISE_MUL, dsum0, &one, nullptr, dsum);

  // P = exp(S - lse).
  Desc& masked = build_scores(g, s, q, kt, scale);
  Desc& shifted = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_SUB, masked, &stats, nullptr, shifted);
  Desc& prob = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_EXP, shifted, nullptr, nullptr, prob);

  // dV = P^T dO (reduced over the heads of each group).
  Desc& probT = g.virt(tdims, tstr, CUDNN_DATA_BFLOAT16);
  g.reshape(prob, probT);
  const bool gqa = s.H != s.G;
  if (!gqa) {
    g.matmul(probT, dout, dv);
  } else {
    Desc& dv_h =
        g.virt({s.b, s.H, s.Tk, s.d}, {s.H * s.Tk * s.d, s.Tk * s.d, s.d, 1}, CUDNN_DATA_BFLOAT16);
    g.matmul(probT, dout, dv_h);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dv_h, dv);
  }

  // dS = P * (dO V^T - Dsum) * scale.
  Desc& dp = g.virt(sdims, sstr);
  g.matmul(dout, vt, dp);
  Desc& dp1 = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_MUL, dp, &one, nullptr, dp1);
  Desc& dp2 = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_SUB, dp1, &dsum, nullptr, dp2);
  Desc& ds0 = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_MUL, dp2, &prob, nullptr, ds0);
  Desc& ds = g.virt(sdims, sstr);
  g.pointwise(CUDNN_POINTWISE_MUL, ds0, &scale, nullptr, ds);

  // dK = dS^T Q (reduced over the heads of each group).
  Desc& dsT = g.virt(tdims, tstr, CUDNN_DATA_BFLOAT16);
  g.reshape(ds, dsT);
  if (!gqa) {
    g.matmul(dsT, q, dk);
  } else {
    Desc& dk_h =
        g.virt({s.b, s.H, s.Tk, s.d}, {s.H * s.Tk * s.d, s.Tk * s.d, s.d, 1}, CUDNN_DATA_BFLOAT16);
    g.matmul(dsT, q, dk_h);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dk_h, dk);
  }

  // dQ = dS K, accumulated in f32 (zeroed workspace) and then converted.
  Desc& kk = g.virt({s.b, s.G, s.Tk, s.d}, ks, CUDNN_DATA_BFLOAT16);
  g.reshape(kt, kk);
  Desc& dq_acc = g.tensor(kdQAccum, CUDNN_DATA_FLOAT, {s.b, s.H, s.Tq, s.d},
                          {s.H * s.Tq * s.d, s.Tq * s.d, s.d, 1}, false, false,
                          /*reorder_f16x16=*/true);
  g.matmul(ds, kk, dq_acc);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_acc, nullptr, nullptr, dq);

  p->dq_accum_bytes = s.b * s.H * s.Tq * s.d * static_cast<int64_t>(sizeof(float));
  p->plan = std::make_unique<Desc>();
  g.build_plan(*p->plan, &p->workspace);
  return p;
}

// Plans by shape; a failed build is cached too (as a null plan) so it is not retried.
struct PlanCache {
  std::mutex mu;
  std::map<Shape4, std::unique_ptr<Plan>> fwd, bwd;
};
PlanCache& cache() {
  static PlanCache* c = new PlanCache();
  return *c;
}

Plan* get_plan(bool backward, const Shape4& s) {
  PlanCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto& map = backward ? c.bwd : c.fwd;
  auto it = map.find(s);
  if (it == map.end()) {
    std::unique_ptr<Plan> p = backward ? build_backward(s) : build_forward(s);
    if (!p->builder->ok()) {
      std::fprintf(stderr,
                   "msa: cuDNN %s attention refused b=%lld Tq=%lld Tk=%lld H=%lld G=%lld d=%lld "
                   "(cuDNN %zu): %s; using the fallback kernels\n",
                   backward ? "backward" : "forward", static_cast<long long>(s.b),
                   static_cast<long long>(s.Tq), static_cast<long long>(s.Tk),
                   static_cast<long long>(s.H), static_cast<long long>(s.G),
                   static_cast<long long>(s.d), cudnnGetVersion(), p->builder->error().c_str());
      p.reset();
    }
    it = map.emplace(s, std::move(p)).first;
  }
  return it->second.get();
}

// The bottom-right mask's pass-by-value sequence lengths (int32, as the graph declares them); only
// a bottom-right graph has them in its variant pack.
struct SeqLens {
  explicit SeqLens(const Shape4& s)
      : used(s.bottom_right()), kv(static_cast<int32_t>(s.Tk)), q(static_cast<int32_t>(s.Tq)) {}
  void add_to(std::vector<int64_t>& uids, std::vector<void*>& ptrs) {
    if (!used) return;
    uids.push_back(kSeqKv);
    ptrs.push_back(&kv);
    uids.push_back(kSeqQ);
    ptrs.push_back(&q);
  }
  bool used;
  int32_t kv, q;
};

void execute(Plan& p, const std::vector<int64_t>& uids, std::vector<void*> ptrs, void* ws) {
  Builder vb;
  Desc pack(vb, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
           uids.data(), "variant pack uids")
      .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
           static_cast<int64_t>(ptrs.size()), ptrs.data(), "variant pack pointers")
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws, "variant pack workspace");
  pack.finalize("variant pack");
  MSA_CHECK(vb.ok(), "cuDNN attention: %s", vb.error());
  MSA_CUDNN_CHECK(cudnnBackendExecute(cudnn_handle(), p.plan->get(), pack.get()));
}

}  // namespace

bool cudnn_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                             Tensor& out, Tensor& lse, const cpu::AttentionDims& dims) {
  const Shape4 s{dims.batch, dims.seq, dims.keys(), dims.heads, dims.groups, dims.dim};
  Plan* p = get_plan(false, s);
  if (p == nullptr) return false;
  float scale_f = static_cast<float>(scale), lowest = std::numeric_limits<float>::lowest();
  void* ws = p->workspace > 0 ? workspace(static_cast<size_t>(p->workspace)) : nullptr;
  std::vector<int64_t> uids{kQ, kK, kV, kO, kStats, kScale, kLowest};
  std::vector<void*> ptrs{q.raw_data(),   k.raw_data(), v.raw_data(), out.raw_data(),
                          lse.raw_data(), &scale_f,     &lowest};
  SeqLens lens(s);
  lens.add_to(uids, ptrs);
  execute(*p, uids, std::move(ptrs), ws);
  return true;
}

bool cudnn_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, double scale,
                              Tensor& dq, Tensor& dk, Tensor& dv,
                              const cpu::AttentionDims& dims) {
  const Shape4 s{dims.batch, dims.seq, dims.keys(), dims.heads, dims.groups, dims.dim};
  Plan* p = get_plan(true, s);
  if (p == nullptr) return false;
  float scale_f = static_cast<float>(scale), lowest = std::numeric_limits<float>::lowest(),
        one = 1.0f;
  void* ws = p->workspace > 0 ? workspace(static_cast<size_t>(p->workspace)) : nullptr;
  // The f32 dQ accumulator (b H Tq d: 32 GiB at 1M tokens and 64 heads) through the caching
  // allocator, not the grow-only workspace: counted in the memory stats, returned after the call.
  Tensor dq_accum = Tensor::zeros({p->dq_accum_bytes / static_cast<int64_t>(sizeof(float))},
                                  DType::kF32, Device::kCUDA);
  void* dq_acc = dq_accum.raw_data();
  std::vector<int64_t> uids{kQ,  kK,  kV,     kO,   kdO,     kStats,  kdQ,
                            kdK, kdV, kScale, kOne, kLowest, kdQAccum};
  std::vector<void*> ptrs{q.raw_data(),    k.raw_data(),   v.raw_data(),  out.raw_data(),
                          dout.raw_data(), lse.raw_data(), dq.raw_data(), dk.raw_data(),
                          dv.raw_data(),   &scale_f,       &one,          &lowest,
                          dq_acc};
  SeqLens lens(s);
  lens.add_to(uids, ptrs);
  execute(*p, uids, std::move(ptrs), ws);
  return true;
}

}  // namespace msa::cuda
