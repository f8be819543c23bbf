// Device dispatch and argument checks for kernels/msa.h.
#include "kernels/msa.h"

#include <cmath>
#include <initializer_list>

#include "kernels/cpu/dtype_dispatch.h"
#include "kernels/cpu/msa.h"
#if MSA_HAS_CUDA
#include "kernels/cuda/msa_cuda.h"
#endif

namespace msa {
namespace {

// Index-branch sizes from iq/ik [batch, T, G, dI].
cpu::MsaDims index_dims(const Tensor& index_tensor, int block_size, int topk, const char* op) {
  MSA_CHECK(index_tensor.ndim() == 4, "%s: index tensor %s must be [batch, T, G, dI]", op,
            index_tensor.describe());
  MSA_CHECK(block_size > 0, "%s: block size %d must be positive", op, block_size);
  cpu::MsaDims dims{};
  dims.batch = index_tensor.size(0);
  dims.seq = index_tensor.size(1);
  dims.groups = index_tensor.size(2);
  dims.index_dim = index_tensor.size(3);
  dims.block_size = block_size;
  dims.topk = topk;
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

// Main-branch sizes from q [batch, T, H, d], k [batch, T, G, d] and the
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
  MSA_CHECK(dims.groups > 0 && dims.heads % dims.groups == 0,
            "%s: H = %d query heads is not a multiple of G = %d KV heads", op, dims.heads,
            dims.groups);
  check_shape(k, {dims.batch, dims.seq, dims.groups, dims.dim}, "msa: k");
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

void msa_block_pool_forward(const Tensor& ik, int block_size, Tensor& kbar) {
  const cpu::MsaDims dims = index_dims(ik, block_size, 1, "msa_block_pool_forward");
  check_shape(kbar, {dims.batch, dims.num_blocks(), dims.groups, dims.index_dim},
              "msa_block_pool_forward: kbar");
  check_same_device(ik, kbar, "ik", "kbar");
  if (ik.is_cuda()) {
#if MSA_HAS_CUDA
    check_dtype(kbar, ik.dtype(), "msa_block_pool_forward: kbar");
    return cuda::msa_block_pool_forward(ik, kbar, dims);
#endif
    cuda_not_built("msa_block_pool_forward");
  }
  cpu::dispatch_floating(ik.dtype(), "msa_block_pool_forward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(kbar, ik.dtype(), "msa_block_pool_forward: kbar");
    cpu::msa_block_pool_forward<T>(ik.data<T>(), kbar.data<T>(), dims);
  });
}

void msa_block_pool_backward(const Tensor& dkbar, int block_size, Tensor& dik) {
  const cpu::MsaDims dims = index_dims(dik, block_size, 1, "msa_block_pool_backward");
  check_shape(dkbar, {dims.batch, dims.num_blocks(), dims.groups, dims.index_dim},
              "msa_block_pool_backward: dkbar");
  check_same_device(dik, dkbar, "dik", "dkbar");
  if (dik.is_cuda()) {
#if MSA_HAS_CUDA
    check_dtype(dkbar, dik.dtype(), "msa_block_pool_backward: dkbar");
    return cuda::msa_block_pool_backward(dkbar, dik, dims);
#endif
    cuda_not_built("msa_block_pool_backward");
  }
  cpu::dispatch_floating(dik.dtype(), "msa_block_pool_backward", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(dkbar, dik.dtype(), "msa_block_pool_backward: dkbar");
    cpu::msa_block_pool_backward<T>(dkbar.data<T>(), dik.data<T>(), dims);
  });
}

void msa_index_topk(const Tensor& iq, const Tensor& kbar, BlockSelection& sel) {
  const cpu::MsaDims dims = index_dims(iq, sel.block_size, sel.topk, "msa_index_topk");
  check_shape(kbar, {dims.batch, dims.num_blocks(), dims.groups, dims.index_dim},
              "msa_index_topk: kbar");
  check_selection(sel, dims.batch, dims.seq, dims.groups, "msa_index_topk");
  check_same_device(iq, kbar, "iq", "kbar");
  check_same_device(iq, sel.indices, "iq", "selection.indices");
  if (iq.is_cuda()) {
#if MSA_HAS_CUDA
    check_dtype(kbar, iq.dtype(), "msa_index_topk: kbar");
    return cuda::msa_index_topk(iq, kbar, sel.indices, sel.counts, dims);
#endif
    cuda_not_built("msa_index_topk");
  }
  cpu::dispatch_floating(iq.dtype(), "msa_index_topk", [&](auto zero) {
    using T = decltype(zero);
    check_dtype(kbar, iq.dtype(), "msa_index_topk: kbar");
    cpu::msa_index_topk<T>(iq.data<T>(), kbar.data<T>(), sel.indices.data<int32_t>(),
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
                                              nullptr, dims);
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

void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const BlockSelection& sel, double scale, Tensor& out, Tensor& lse,
                                  Tensor& block_mass) {
  const char* op = "msa_sparse_attention_forward";
  const cpu::MsaDims dims = attention_dims(q, k, sel, op);
  check_shape(v, k.shape(), "msa_sparse_attention_forward: v");
  check_shape(out, q.shape(), "msa_sparse_attention_forward: out");
  check_shape(lse, {dims.batch, dims.heads, dims.seq}, "msa_sparse_attention_forward: lse");
  check_shape(block_mass, {dims.batch, dims.seq, dims.heads, dims.topk},
              "msa_sparse_attention_forward: block_mass");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&v, &out, &lse, &block_mass})
    check_same_device(q, *t, "q", "msa_sparse_attention_forward argument");
  MSA_CHECK(q.is_cuda(), "%s with block masses: CUDA tensors only", op);
#if MSA_HAS_CUDA
  check_dtype(k, q.dtype(), "msa_sparse_attention_forward: k");
  check_dtype(v, q.dtype(), "msa_sparse_attention_forward: v");
  check_dtype(out, q.dtype(), "msa_sparse_attention_forward: out");
  cuda::msa_sparse_attention_forward(q, k, v, sel.indices, sel.counts, scale, out, lse,
                                     &block_mass, dims);
#else
  (void)scale;  // unreachable: the check above refuses CPU tensors
#endif
}

IndexLossResult msa_index_loss_from_mass(const Tensor& block_mass, const BlockSelection& sel,
                                         const Tensor& iq, const Tensor& kbar, int block_size,
                                         double weight, Tensor& diq, Tensor& dkbar) {
  const char* op = "msa_index_loss_from_mass";
  cpu::MsaDims dims = index_dims(iq, block_size, sel.topk, op);
  MSA_CHECK(block_mass.ndim() == 4, "%s: block_mass %s must be [batch, T, H, topk]", op,
            block_mass.describe());
  dims.heads = block_mass.size(2);
  MSA_CHECK(dims.heads % dims.groups == 0, "%s: H = %d is not a multiple of G = %d", op,
            dims.heads, dims.groups);
  check_shape(block_mass, {dims.batch, dims.seq, dims.heads, dims.topk},
              "msa_index_loss_from_mass: block_mass");
  check_shape(kbar, {dims.batch, dims.num_blocks(), dims.groups, dims.index_dim},
              "msa_index_loss_from_mass: kbar");
  check_shape(diq, iq.shape(), "msa_index_loss_from_mass: diq");
  check_shape(dkbar, kbar.shape(), "msa_index_loss_from_mass: dkbar");
  MSA_CHECK(sel.block_size == block_size, "%s: selection block size %d != block_size %d", op,
            sel.block_size, block_size);
  check_selection(sel, dims.batch, dims.seq, dims.groups, op);
  for (const Tensor* t :
       std::initializer_list<const Tensor*>{&block_mass, &kbar, &diq, &dkbar, &sel.indices})
    check_same_device(iq, *t, "iq", "msa_index_loss_from_mass argument");
  MSA_CHECK(iq.is_cuda(), "%s: CUDA tensors only (the CPU uses msa_index_loss)", op);
  IndexLossResult result;
#if MSA_HAS_CUDA
  const cpu::IndexLossSums sums = cuda::msa_index_loss_from_mass(
      block_mass, sel.indices, sel.counts, iq, kbar, weight, diq, dkbar, dims);
  result.n_rows = sums.n_rows;
  result.loss = sums.n_rows > 0 ? sums.kl_sum / static_cast<double>(sums.n_rows) : 0.0;
#else
  (void)weight;  // unreachable: the check above refuses CPU tensors
#endif
  return result;
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
                                               scale, dq, dk, dv, dims);
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
                               const Tensor& kbar, double scale, int block_size, double weight,
                               Tensor& diq, Tensor& dkbar) {
  const char* op = "msa_index_loss";
  const bool dense_target = mode == IndexLossMode::kDenseTarget;
  cpu::MsaDims dims = index_dims(iq, block_size, dense_target ? 1 : sel.topk, op);
  MSA_CHECK(q.ndim() == 4 && k.ndim() == 4, "%s: q %s and k %s must be 4-D", op, q.describe(),
            k.describe());
  dims.heads = q.size(2);
  dims.dim = q.size(3);
  MSA_CHECK(dims.heads % dims.groups == 0, "%s: H = %d is not a multiple of G = %d", op, dims.heads,
            dims.groups);
  check_shape(q, {dims.batch, dims.seq, dims.heads, dims.dim}, "msa_index_loss: q");
  check_shape(k, {dims.batch, dims.seq, dims.groups, dims.dim}, "msa_index_loss: k");
  check_shape(lse, {dims.batch, dims.heads, dims.seq}, "msa_index_loss: lse");
  check_shape(kbar, {dims.batch, dims.num_blocks(), dims.groups, dims.index_dim},
              "msa_index_loss: kbar");
  check_shape(diq, iq.shape(), "msa_index_loss: diq");
  check_shape(dkbar, kbar.shape(), "msa_index_loss: dkbar");
  if (!dense_target) {
    MSA_CHECK(sel.block_size == block_size, "%s: selection block size %d != block_size %d", op,
              sel.block_size, block_size);
    check_selection(sel, dims.batch, dims.seq, dims.groups, op);
  }
  for (const Tensor* t : std::initializer_list<const Tensor*>{&q, &k, &lse, &kbar, &diq, &dkbar})
    check_same_device(iq, *t, "iq", "msa_index_loss argument");
  if (iq.is_cuda()) {
#if MSA_HAS_CUDA
    if (dense_target && cuda::dense_target_loss_supported(q, dims) &&
        diq.dtype() == DType::kF32 && dkbar.dtype() == DType::kF32) {
      const cpu::IndexLossSums sums = cuda::msa_index_loss_dense_target(
          q, k, lse, iq, kbar, scale, weight, diq, dkbar, dims);
      IndexLossResult result;
      result.n_rows = sums.n_rows;
      result.loss = sums.n_rows > 0 ? sums.kl_sum / static_cast<double>(sums.n_rows) : 0.0;
      return result;
    }
#endif
    // Other CUDA cases (f32 q/k, unusual shapes; the sparse mode from q and k instead of the
    // forward's block masses) run the CPU reference on f32 host copies.
    auto host = [](const Tensor& t) { return t.to(Device::kCPU).to(DType::kF32); };
    BlockSelection hsel;
    if (!dense_target) {
      hsel.block_size = sel.block_size;
      hsel.topk = sel.topk;
      hsel.indices = sel.indices.to(Device::kCPU);
      hsel.counts = sel.counts.to(Device::kCPU);
    }
    Tensor hdiq = Tensor::empty(diq.shape(), DType::kF32),
           hdkbar = Tensor::empty(dkbar.shape(), DType::kF32);
    const IndexLossResult r = msa_index_loss(mode, host(q), host(k), host(lse), hsel, host(iq),
                                             host(kbar), scale, block_size, weight, hdiq, hdkbar);
    diq.copy_from(hdiq.to(diq.dtype()).to(Device::kCUDA));
    dkbar.copy_from(hdkbar.to(dkbar.dtype()).to(Device::kCUDA));
    return r;
  }
  IndexLossResult result;
  cpu::dispatch_floating(iq.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    for (const Tensor* t : std::initializer_list<const Tensor*>{&q, &k, &lse, &kbar, &diq, &dkbar})
      check_dtype(*t, iq.dtype(), "msa_index_loss argument");
    const int32_t* indices = dense_target ? nullptr : sel.indices.data<int32_t>();
    const int32_t* counts = dense_target ? nullptr : sel.counts.data<int32_t>();
    const cpu::IndexLossSums sums = cpu::msa_index_loss<T>(
        dense_target, q.data<T>(), k.data<T>(), lse.data<T>(), indices, counts, iq.data<T>(),
        kbar.data<T>(), scale, weight, diq.data<T>(), dkbar.data<T>(), dims);
    result.n_rows = sums.n_rows;
    result.loss = sums.n_rows > 0 ? sums.kl_sum / static_cast<double>(sums.n_rows) : 0.0;
  });
  return result;
}

double msa_index_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        int64_t query_stride) {
  const char* op = "msa_index_recall";
  const cpu::MsaDims dims = attention_dims(q, k, sel, op);
  // Recall is a sampled diagnostic: compute it in f64 on the CPU, whatever the
  // inputs' device.
  auto host_f64 = [](const Tensor& t) {
    Tensor h = t.is_cuda() ? t.to(Device::kCPU) : t;
    return h.dtype() == DType::kF64 ? h : h.to(DType::kF64);
  };
  const Tensor qh = host_f64(q), kh = host_f64(k);
  const Tensor idx = sel.indices.is_cuda() ? sel.indices.to(Device::kCPU) : sel.indices;
  const Tensor cnt = sel.counts.is_cuda() ? sel.counts.to(Device::kCPU) : sel.counts;
  int64_t n_terms = 0;
  const double sum =
      cpu::msa_index_recall_sum<double>(qh.data<double>(), kh.data<double>(), idx.data<int32_t>(),
                                        cnt.data<int32_t>(), scale, query_stride, &n_terms, dims);
  return n_terms > 0 ? sum / static_cast<double>(n_terms) : 1.0;
}

}  // namespace msa
