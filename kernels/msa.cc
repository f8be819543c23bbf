// Device dispatch and argument checks for kernels/msa.h.
#include "kernels/msa.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <vector>

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/msa.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/msa_cuda.h"
#endif

namespace msa {
namespace {

// Queries sit bottom-right of the keys (query t at position keys - seq + t), on either device.
void check_query_offset(const Tensor& queries, const Tensor& keys, const cpu::MsaDims& dims,
                        const char* op) {
  // The key tensor's own length: dims.keys() reads kv_seq 0 as "as many as the queries", so an
  // empty key tensor would pass it and the kernels would read past it.
  MSA_CHECK(keys.size(1) >= dims.seq, "%s: %s has more query tokens than the keys %s", op,
            queries.describe(), keys.describe());
}

// Index-branch sizes from iq [batch, Tq, G, dI] and ik [batch, Tk, dI] (Tq <= Tk).
cpu::MsaDims index_dims(const Tensor& iq, const Tensor& ik, int block_size, int topk,
                        const char* op) {
  MSA_CHECK(iq.ndim() == 4, "%s: iq %s must be [batch, T, G, dI]", op, iq.describe());
  MSA_CHECK(block_size > 0, "%s: block size %d must be positive", op, block_size);
  cpu::MsaDims dims{};
  dims.batch = iq.size(0);
  dims.seq = iq.size(1);
  dims.groups = iq.size(2);
  dims.index_dim = iq.size(3);
  dims.block_size = block_size;
  dims.topk = topk;
  MSA_CHECK(ik.ndim() == 3 && ik.size(0) == dims.batch && ik.size(2) == dims.index_dim,
            "%s: ik %s must be [batch, Tk, dI] = [%d, Tk, %d] (iq %s)", op, ik.describe(),
            dims.batch, dims.index_dim, iq.describe());
  dims.kv_seq = ik.size(1);
  check_query_offset(iq, ik, dims, op);
  check_same_device(iq, ik, "iq", "ik");
  return dims;
}

void check_selection(const BlockSelection& sel, int64_t batch, int64_t T, int64_t G,
                     const char* op) {
  MSA_CHECK(sel.indices.defined() && sel.counts.defined(), "%s: selection not allocated", op);
  check_shape(sel.indices, {batch, T, G, sel.topk}, "msa: selection.indices");
  check_shape(sel.counts, {batch, T, G}, "msa: selection.counts");
  check_dtype(sel.indices, DType::kI32, "msa: selection.indices");
  check_dtype(sel.counts, DType::kI32, "msa: selection.counts");
}

// Main-branch sizes from q [batch, Tq, H, d], k [batch, Tk, G, d] (Tq <= Tk) and the
// selection.
cpu::MsaDims attention_dims(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                            const char* op) {
  MSA_CHECK(q.ndim() == 4 && k.ndim() == 4, "%s: q %s and k %s must be 4-D", op, q.describe(),
            k.describe());
  cpu::MsaDims dims{};
  dims.batch = q.size(0);
  dims.seq = q.size(1);
  dims.heads = q.size(2);
  dims.groups = k.size(2);
  dims.dim = q.size(3);
  dims.block_size = sel.block_size;
  dims.topk = sel.topk;
  dims.kv_seq = k.size(1);
  MSA_CHECK(dims.groups > 0 && dims.heads % dims.groups == 0,
            "%s: H = %d query heads is not a multiple of G = %d KV heads", op, dims.heads,
            dims.groups);
  check_query_offset(q, k, dims, op);
  check_shape(k, {dims.batch, dims.kv_seq, dims.groups, dims.dim}, "msa: k");
  check_selection(sel, dims.batch, dims.seq, dims.groups, op);
  check_same_device(q, k, "q", "k");
  check_same_device(q, sel.indices, "q", "selection.indices");
  return dims;
}

[[noreturn]] void cuda_not_built(const char* op) {
  MSA_CHECK(false, "%s: CUDA implementation not built yet", op);
  __builtin_unreachable();
}

}  // namespace

const std::vector<Tensor>* SelectionCache::find(const std::vector<int64_t>& key) const {
  const auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second.buffers;
}

void SelectionCache::put(std::vector<int64_t> key, std::vector<Tensor> buffers,
                         std::vector<Tensor> sources) {
  entries_[std::move(key)] = Entry{std::move(buffers), std::move(sources)};
}

int64_t SelectionCache::bytes() const {
  int64_t total = 0;
  for (const auto& [key, entry] : entries_)
    for (const Tensor& t : entry.buffers) total += t.nbytes();
  return total;
}

BlockSelection BlockSelection::allocate(int64_t batch, int64_t T, int64_t G, int block_size,
                                        int topk, Device device) {
  MSA_CHECK(block_size > 0 && topk > 0, "BlockSelection: block_size %d and topk %d must be > 0",
            block_size, topk);
  BlockSelection sel;
  sel.block_size = block_size;
  sel.topk = topk;
  sel.indices = Tensor::empty({batch, T, G, topk}, DType::kI32, device);
  sel.counts = Tensor::empty({batch, T, G}, DType::kI32, device);
  return sel;
}

void msa_index_topk(const Tensor& iq, const Tensor& ik, BlockSelection& sel) {
  const char* op = "msa_index_topk";
  const cpu::MsaDims dims = index_dims(iq, ik, sel.block_size, sel.topk, op);
  check_selection(sel, dims.batch, dims.seq, dims.groups, op);
  check_same_device(iq, sel.indices, "iq", "selection.indices");
  check_dtype(ik, iq.dtype(), "msa_index_topk: ik");
  if (sel.cache) sel.cache->clear();  // indices and counts are rewritten
  if (iq.is_cuda()) {
#if MSA_HAS_CUDA
    return cuda::msa_index_topk(iq, ik, sel.indices, sel.counts, dims);
#endif
    cuda_not_built(op);
  }
  cpu::dispatch_floating(iq.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    cpu::msa_index_topk<T>(iq.data<T>(), ik.data<T>(), sel.indices.data<int32_t>(),
                           sel.counts.data<int32_t>(), dims);
  });
}

void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const BlockSelection& sel, double scale, Tensor& out,
                                  Tensor& lse) {
  const char* op = "msa_sparse_attention_forward";
  const cpu::MsaDims dims = attention_dims(q, k, sel, op);
  check_shape(v, k.shape(), "msa_sparse_attention_forward: v");
  check_shape(out, q.shape(), "msa_sparse_attention_forward: out");
  check_shape(lse, {dims.batch, dims.heads, dims.seq}, "msa_sparse_attention_forward: lse");
  check_same_device(q, v, "q", "v");
  check_same_device(q, out, "q", "out");
  check_same_device(q, lse, "q", "lse");
  if (q.is_cuda()) {
#if MSA_HAS_CUDA
    check_dtype(k, q.dtype(), "msa_sparse_attention_forward: k");
    check_dtype(v, q.dtype(), "msa_sparse_attention_forward: v");
    check_dtype(out, q.dtype(), "msa_sparse_attention_forward: out");
    return cuda::msa_sparse_attention_forward(q, k, v, sel.indices, sel.counts, scale, out, lse,
                                              nullptr, dims, sel.cache.get());
#endif
    cuda_not_built(op);
  }
  cpu::dispatch_floating(q.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    check_dtype(k, q.dtype(), "msa_sparse_attention_forward: k");
    check_dtype(v, q.dtype(), "msa_sparse_attention_forward: v");
    check_dtype(out, q.dtype(), "msa_sparse_attention_forward: out");
    check_dtype(lse, q.dtype(), "msa_sparse_attention_forward: lse");
    cpu::msa_sparse_attention_forward<T>(q.data<T>(), k.data<T>(), v.data<T>(),
                                         sel.indices.data<int32_t>(), sel.counts.data<int32_t>(),
                                         scale, out.data<T>(), lse.data<T>(), dims);
  });
}

void msa_sparse_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const BlockSelection& sel, double scale, Tensor& dq, Tensor& dk,
                                   Tensor& dv) {
  const char* op = "msa_sparse_attention_backward";
  const cpu::MsaDims dims = attention_dims(q, k, sel, op);
  check_shape(v, k.shape(), "msa_sparse_attention_backward: v");
  check_shape(out, q.shape(), "msa_sparse_attention_backward: out");
  check_shape(dout, q.shape(), "msa_sparse_attention_backward: dout");
  check_shape(lse, {dims.batch, dims.heads, dims.seq}, "msa_sparse_attention_backward: lse");
  check_shape(dq, q.shape(), "msa_sparse_attention_backward: dq");
  check_shape(dk, k.shape(), "msa_sparse_attention_backward: dk");
  check_shape(dv, k.shape(), "msa_sparse_attention_backward: dv");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&v, &out, &dout, &lse, &dq, &dk, &dv})
    check_same_device(q, *t, "q", "msa_sparse_attention_backward argument");
  if (q.is_cuda()) {
#if MSA_HAS_CUDA
    for (const Tensor* t : std::initializer_list<const Tensor*>{&k, &v, &out, &dout, &dq, &dk, &dv})
      check_dtype(*t, q.dtype(), "msa_sparse_attention_backward argument");
    return cuda::msa_sparse_attention_backward(dout, q, k, v, out, lse, sel.indices, sel.counts,
                                               scale, dq, dk, dv, dims, sel.cache.get());
#endif
    cuda_not_built(op);
  }
  cpu::dispatch_floating(q.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    for (const Tensor* t :
         std::initializer_list<const Tensor*>{&k, &v, &out, &dout, &lse, &dq, &dk, &dv})
      check_dtype(*t, q.dtype(), "msa_sparse_attention_backward argument");
    cpu::msa_sparse_attention_backward<T>(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(),
                                          out.data<T>(), lse.data<T>(), sel.indices.data<int32_t>(),
                                          sel.counts.data<int32_t>(), scale, dq.data<T>(),
                                          dk.data<T>(), dv.data<T>(), dims);
  });
}

IndexLossResult msa_index_loss(IndexLossMode mode, const Tensor& q, const Tensor& k,
                               const Tensor& lse, const BlockSelection& sel, const Tensor& iq,
                               const Tensor& ik, double scale, double weight, Tensor& diq,
                               Tensor& dik) {
  const char* op = "msa_index_loss";
  const bool dense_target = mode == IndexLossMode::kDenseTarget;
  // The dense-target mode reads no selection (sel may be default-constructed).
  cpu::MsaDims dims = index_dims(iq, ik, sel.block_size, dense_target ? 1 : sel.topk, op);
  MSA_CHECK(q.ndim() == 4, "%s: q %s must be [batch, T, H, d]", op, q.describe());
  dims.heads = q.size(2);
  dims.dim = q.size(3);
  MSA_CHECK(dims.heads % dims.groups == 0, "%s: H = %d query heads is not a multiple of G = %d", op,
            dims.heads, dims.groups);
  check_shape(q, {dims.batch, dims.seq, dims.heads, dims.dim}, "msa_index_loss: q");
  check_shape(k, {dims.batch, dims.kv_seq, dims.groups, dims.dim}, "msa_index_loss: k");
  check_shape(lse, {dims.batch, dims.heads, dims.seq}, "msa_index_loss: lse");
  check_shape(diq, iq.shape(), "msa_index_loss: diq");
  check_shape(dik, ik.shape(), "msa_index_loss: dik");
  if (!dense_target) {
    check_selection(sel, dims.batch, dims.seq, dims.groups, op);
    check_same_device(iq, sel.indices, "iq", "selection.indices");
  }
  check_same_device(iq, q, "iq", "q");
  check_same_device(iq, k, "iq", "k");
  check_same_device(iq, lse, "iq", "lse");
  check_same_device(iq, diq, "iq", "diq");
  check_same_device(iq, dik, "iq", "dik");
  auto result_of = [](const cpu::IndexLossSums& sums) {
    IndexLossResult result;
    result.n_rows = sums.n_rows;
    result.loss = sums.n_rows > 0 ? sums.kl_sum / static_cast<double>(sums.n_rows) : 0.0;
    return result;
  };
  if (iq.is_cuda()) {
#if MSA_HAS_CUDA
    if (cuda::index_loss_cuda_supported(q, iq, dims) && diq.dtype() == DType::kF32 &&
        dik.dtype() == DType::kF32) {
      return result_of(
          dense_target
              ? cuda::msa_index_loss_dense(q, k, lse, iq, ik, scale, weight, diq, dik, dims)
              : cuda::msa_index_loss_sparse(q, k, lse, sel.indices, sel.counts, iq, ik, scale,
                                            weight, diq, dik, dims, sel.cache.get()));
    }
#endif
    // Other CUDA cases (f32 q/k, sizes the GPU kernels were not written for) run the CPU
    // reference on f32 host copies.
    auto host = [](const Tensor& t) { return t.to(Device::kCPU).to(DType::kF32); };
    BlockSelection hsel;
    hsel.block_size = sel.block_size;
    hsel.topk = sel.topk;
    if (!dense_target) {
      hsel.indices = sel.indices.to(Device::kCPU);
      hsel.counts = sel.counts.to(Device::kCPU);
    }
    Tensor hdiq = Tensor::empty(diq.shape(), DType::kF32),
           hdik = Tensor::empty(dik.shape(), DType::kF32);
    const IndexLossResult r = msa_index_loss(mode, host(q), host(k), host(lse), hsel, host(iq),
                                             host(ik), scale, weight, hdiq, hdik);
    diq.copy_from(hdiq.to(diq.dtype()).to(Device::kCUDA));
    dik.copy_from(hdik.to(dik.dtype()).to(Device::kCUDA));
    return r;
  }
  IndexLossResult result;
  cpu::dispatch_floating(iq.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    check_dtype(q, iq.dtype(), "msa_index_loss: q");
    check_dtype(k, iq.dtype(), "msa_index_loss: k");
    check_dtype(lse, iq.dtype(), "msa_index_loss: lse");
    check_dtype(ik, iq.dtype(), "msa_index_loss: ik");
    check_dtype(diq, iq.dtype(), "msa_index_loss: diq");
    check_dtype(dik, iq.dtype(), "msa_index_loss: dik");
    const int32_t* indices = dense_target ? nullptr : sel.indices.data<int32_t>();
    const int32_t* counts = dense_target ? nullptr : sel.counts.data<int32_t>();
    result = result_of(cpu::msa_index_loss<T>(dense_target, q.data<T>(), k.data<T>(), lse.data<T>(),
                                              indices, counts, iq.data<T>(), ik.data<T>(), scale,
                                              weight, diq.data<T>(), dik.data<T>(), dims));
  });
  return result;
}

namespace {

// Recall is a sampled diagnostic: computed in f64 on the CPU, whatever the inputs' device.
Tensor host_f64(const Tensor& t) {
  Tensor h = t.is_cuda() ? t.to(Device::kCPU) : t;
  return h.dtype() == DType::kF64 ? h : h.to(DType::kF64);
}
Tensor host(const Tensor& t) { return t.is_cuda() ? t.to(Device::kCPU) : t; }

}  // namespace

namespace {

// The sampled position's offset in window `window` of `stride` (>= 2) queries: i * (golden ratio
// - 1) mod 1 fills [0, 1) evenly for any run of consecutive i.
int64_t recall_phase(int64_t window, int64_t stride) {
  const double x = static_cast<double>(window) * 0.6180339887498949;
  const auto phase = static_cast<int64_t>((x - std::floor(x)) * static_cast<double>(stride));
  return std::min(phase, stride - 1);
}

}  // namespace

int64_t strided_recall_position(int64_t window, int64_t stride) {
  if (stride <= 1) return window;
  return window * stride + recall_phase(window, stride);
}

int64_t max_recall_stride(int64_t T) {
  // Window 1 starts at s + phase(1, s), which grows with s: a binary search for the largest s
  // where that is below T (a step-by-step walk took seconds at T = 1e15), compared as
  // phase < T - s so that nothing overflows near INT64_MAX.
  int64_t lo = 1, hi = std::max<int64_t>(1, T - 1);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (recall_phase(1, mid) < T - mid)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

namespace {

// Calls fn(t - offset) for every sampled position t in [offset, offset + T), increasing.
template <class Fn>
void for_each_strided_query(int64_t T, int64_t query_stride, int64_t offset, Fn fn) {
  const int64_t stride = std::max<int64_t>(1, query_stride);
  for (int64_t w = offset / stride; w * stride < offset + T; ++w) {
    const int64_t p = strided_recall_position(w, stride);
    if (p >= offset && p < offset + T) fn(p - offset);
  }
}

}  // namespace

std::vector<RecallQuery> strided_recall_queries(int64_t batch, int64_t T, int64_t query_stride,
                                                int64_t offset) {
  std::vector<RecallQuery> out;
  out.reserve(batch * strided_recall_count(T, query_stride, offset));
  for (int64_t b = 0; b < batch; ++b)
    for_each_strided_query(T, query_stride, offset, [&](int64_t t) { out.push_back({b, t}); });
  return out;
}

int64_t bounded_recall_stride(int64_t T, int64_t requested, Device device, int64_t keys) {
  const int64_t budget =
      device == Device::kCUDA ? kGpuRecallPairsPerSequence : kRecallPairsPerSequence;
  const int64_t needed = (T * (keys < 0 ? T : keys) + budget - 1) / budget;
  return std::max(requested, needed);
}

int64_t strided_recall_count(int64_t T, int64_t query_stride, int64_t offset) {
  int64_t n = 0;
  for_each_strided_query(T, query_stride, offset, [&](int64_t) { ++n; });
  return n;
}

namespace {

// The recalls' one pass: checks the queries, groups them by batch row (each row's queries in the
// given order, so the strided queries sum in the order the stride loop did), makes the f64 host
// copies and returns the means over the rows (1.0 for none).
OracleRecall query_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                          const std::vector<RecallQuery>& queries, const char* op) {
  const cpu::MsaDims dims = attention_dims(q, k, sel, op);
  MSA_CHECK(!queries.empty(), "%s: no queries to measure", op);
  std::vector<int64_t> begin(dims.batch + 1, 0), ts(queries.size());
  for (const RecallQuery& x : queries) {
    MSA_CHECK(x.batch >= 0 && x.batch < dims.batch && x.t >= 0 && x.t < dims.seq,
              "%s: query (batch %lld, t %lld) outside [0, %lld) x [0, %lld)", op,
              static_cast<long long>(x.batch), static_cast<long long>(x.t),
              static_cast<long long>(dims.batch), static_cast<long long>(dims.seq));
    ++begin[x.batch + 1];
  }
  for (int64_t b = 0; b < dims.batch; ++b) begin[b + 1] += begin[b];
  std::vector<int64_t> fill(begin.begin(), begin.end() - 1);
  for (const RecallQuery& x : queries) ts[fill[x.batch]++] = x.t;
  const cpu::RecallQueries rq{begin.data(), ts.data()};
  cpu::OracleRecallSums sums;
  bool measured = false;
#if MSA_HAS_CUDA
  if (q.is_cuda() && k.is_cuda() && sel.indices.is_cuda() && sel.counts.is_cuda() &&
      cuda::oracle_recall_cuda_supported(q, k, dims)) {
    sums = cuda::oracle_recall_sums(q, k, sel.indices, sel.counts, scale, rq, dims);
    measured = true;
  }
#endif
  if (!measured) {
    const Tensor qh = host_f64(q), kh = host_f64(k);
    const Tensor idx = host(sel.indices), cnt = host(sel.counts);
    sums = cpu::msa_oracle_recall_sums<double>(qh.data<double>(), kh.data<double>(),
                                               idx.data<int32_t>(), cnt.data<int32_t>(), scale, rq,
                                               dims);
  }
  auto mean = [&](double sum) {
    return sums.n_rows > 0 ? sum / static_cast<double>(sums.n_rows) : 1.0;
  };
  return {mean(sums.index_recall), mean(sums.block_recall), mean(sums.index_recall_ceiling),
          mean(sums.max_pool_recall_ceiling), sums.n_rows};
}

OracleRecall strided_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                            double scale, int64_t query_stride, const char* op) {
  const std::vector<RecallQuery> queries =
      strided_recall_queries(q.size(0), q.size(1), query_stride, k.size(1) - q.size(1));
  return queries.empty() ? OracleRecall{1.0, 1.0, 1.0, 1.0, 0}
                         : query_recall(q, k, sel, scale, queries, op);
}

}  // namespace

OracleRecall msa_oracle_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                               double scale, const std::vector<RecallQuery>& queries) {
  return query_recall(q, k, sel, scale, queries, "msa_oracle_recall");
}
OracleRecall msa_oracle_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                               double scale, int64_t query_stride) {
  return strided_recall(q, k, sel, scale, query_stride, "msa_oracle_recall");
}

double msa_index_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        const std::vector<RecallQuery>& queries) {
  return query_recall(q, k, sel, scale, queries, "msa_index_recall").index_recall;
}
double msa_index_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        int64_t query_stride) {
  return strided_recall(q, k, sel, scale, query_stride, "msa_index_recall").index_recall;
}

double msa_block_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        const std::vector<RecallQuery>& queries) {
  return query_recall(q, k, sel, scale, queries, "msa_block_recall").block_recall;
}
double msa_block_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        int64_t query_stride) {
  return strided_recall(q, k, sel, scale, query_stride, "msa_block_recall").block_recall;
}

double msa_index_recall_ceiling(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                                double scale, const std::vector<RecallQuery>& queries) {
  return query_recall(q, k, sel, scale, queries, "msa_index_recall_ceiling").index_recall_ceiling;
}
double msa_index_recall_ceiling(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                                double scale, int64_t query_stride) {
  return strided_recall(q, k, sel, scale, query_stride, "msa_index_recall_ceiling")
      .index_recall_ceiling;
}

double msa_selected_key_fraction(const BlockSelection& sel, const std::vector<RecallQuery>& queries,
                                 const std::vector<int64_t>& key_positions) {
  MSA_CHECK(!queries.empty() && queries.size() == key_positions.size(),
            "msa_selected_key_fraction: %d queries and %d key positions (want the same, > 0)",
            queries.size(), key_positions.size());
  const Tensor indices = sel.indices.to(Device::kCPU), counts = sel.counts.to(Device::kCPU);
  const int64_t batch = indices.size(0), T = indices.size(1), G = indices.size(2);
  const int64_t K = indices.size(3);
  const int32_t* idx = indices.data<int32_t>();
  const int32_t* cnt = counts.data<int32_t>();
  int64_t hits = 0;
  for (size_t i = 0; i < queries.size(); ++i) {
    const RecallQuery& q = queries[i];
    const int64_t key = key_positions[i];
    MSA_CHECK(q.batch >= 0 && q.batch < batch && q.t >= 0 && q.t < T && key >= 0 && key <= q.t,
              "msa_selected_key_fraction: query (%d, %d) with key %d outside [%d, %d] or after it",
              q.batch, q.t, key, batch, T);
    const int32_t block = static_cast<int32_t>(key / sel.block_size);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t row = (q.batch * T + q.t) * G + g;
      for (int32_t e = 0; e < cnt[row]; ++e)
        if (idx[row * K + e] == block) {
          ++hits;
          break;
        }
    }
  }
  return static_cast<double>(hits) / static_cast<double>(queries.size() * G);
}

}  // namespace msa
