// The CPU kernels with fewer queries than keys (kernels/attention.h, kernels/msa.h,
// kernels/rope.h): a shard of Tq queries with the keys of positions [0, p0 + Tq) computes exactly
// the rows p0 .. p0 + Tq - 1 of the full computation (the context-parallel contract). For every
// shard of a 4-way split: RoPE at an offset, dense and block-sparse attention outputs and lse, the
// selection, the index loss (its share of the rows' KL and the gradients), recall and its
// ceiling; the key gradients (dk, dv, dik) of the shards, summed, equal the full ones. The
// reference is the same kernel on the whole sequence, itself tested against plain loops in
// kernels_msa_test.cc and kernels_attention_test.cc. In f64; the rows run the same arithmetic in
// the same order, so the differences are 0 or a few ulps (sums over shards add in another order).
#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/msa.h"
#include "kernels/rope.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::max_scaled_diff;
using test::random_tensor;

constexpr int64_t kBatch = 2, kT = 64, kH = 4, kG = 2, kD = 8, kDI = 8, kShards = 4;
constexpr int kBlock = 8, kTopk = 3;  // 8 blocks, 3 selected; a shard is 2 blocks
constexpr double kTol = 1e-12;

// Elements [begin, end) of dimension `dim` of a contiguous CPU tensor (a copy).
Tensor slice_dim(const Tensor& t, int dim, int64_t begin, int64_t end) {
  Shape shape = t.shape();
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= shape[i];
  for (int i = dim + 1; i < t.ndim(); ++i) inner *= shape[i];
  const int64_t n = shape[dim];
  shape[dim] = end - begin;
  Tensor out = Tensor::empty(shape, t.dtype());
  const size_t es = dtype_size(t.dtype());
  const char* src = static_cast<const char*>(t.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(dst + o * (end - begin) * inner * es, src + (o * n + begin) * inner * es,
                (end - begin) * inner * es);
  return out;
}

// Adds `part` ([batch, n, ...], n <= the length of `sum` along dim 1) into the first n positions
// of `sum` (f64).
void add_prefix(Tensor& sum, const Tensor& part) {
  const int64_t n = part.size(1), total = sum.size(1), inner = part.numel() / (part.size(0) * n);
  double* s = sum.data<double>();
  const double* p = part.data<double>();
  for (int64_t b = 0; b < part.size(0); ++b)
    for (int64_t i = 0; i < n * inner; ++i) s[b * total * inner + i] += p[b * n * inner + i];
}

struct Shard {
  int64_t p0, end;  // queries [p0, end), keys [0, end)
};
std::vector<Shard> shards() {
  std::vector<Shard> out;
  for (int64_t c = 0; c < kShards; ++c) out.push_back({c * kT / kShards, (c + 1) * kT / kShards});
  return out;
}

struct Inputs {
  Tensor q, k, v, iq, ik, dout;
};
Inputs make_inputs(uint64_t seed) {
  Inputs x;
  x.q = random_tensor({kBatch, kT, kH, kD}, seed);
  x.k = random_tensor({kBatch, kT, kG, kD}, seed + 1);
  x.v = random_tensor({kBatch, kT, kG, kD}, seed + 2);
  x.iq = random_tensor({kBatch, kT, kG, kDI}, seed + 3);
  x.ik = random_tensor({kBatch, kT, kDI}, seed + 4);
  x.dout = random_tensor({kBatch, kT, kH, kD}, seed + 5);
  return x;
}
// The shard's view of the inputs: its queries (and dout), the keys up to its end.
Inputs shard_of(const Inputs& x, const Shard& s) {
  return {slice_dim(x.q, 1, s.p0, s.end), slice_dim(x.k, 1, 0, s.end),
          slice_dim(x.v, 1, 0, s.end),    slice_dim(x.iq, 1, s.p0, s.end),
          slice_dim(x.ik, 1, 0, s.end),   slice_dim(x.dout, 1, s.p0, s.end)};
}

const double kScale = 1.0 / std::sqrt(static_cast<double>(kD));

TEST(KernelsQueryOffsetTest, RopeAtAnOffsetEqualsTheFullSequencesRows) {
  const Tensor x = random_tensor({kBatch, kT, kH, kD}, 7);
  const RopeConfig rope(500.0);
  Tensor full = Tensor::empty(x.shape(), x.dtype()), back = Tensor::empty(x.shape(), x.dtype());
  rope_forward(x, rope, full);
  rope_backward(x, rope, back);
  for (const Shard& s : shards()) {
    const Tensor part = slice_dim(x, 1, s.p0, s.end);
    Tensor y = Tensor::empty(part.shape(), part.dtype()), dx = y.clone();
    rope_forward(part, rope, y, s.p0);
    rope_backward(part, rope, dx, s.p0);
    EXPECT_LT(max_scaled_diff(y, slice_dim(full, 1, s.p0, s.end)), kTol) << "shard at " << s.p0;
    EXPECT_LT(max_scaled_diff(dx, slice_dim(back, 1, s.p0, s.end)), kTol) << "shard at " << s.p0;
  }
  // Not vacuous: without the offset a later shard differs.
  const Tensor last = slice_dim(x, 1, kT / 2, kT);
  Tensor y = Tensor::empty(last.shape(), last.dtype());
  rope_forward(last, rope, y);
  EXPECT_GT(max_scaled_diff(y, slice_dim(full, 1, kT / 2, kT)), 1e-3);
}

// out, lse and dq rows per shard; dk, dv summed over the shards.
template <typename Forward, typename Backward>
void expect_shards_match_full(const Inputs& x, Forward forward, Backward backward) {
  Tensor out = Tensor::empty(x.q.shape(), DType::kF64),
         lse = Tensor::empty({kBatch, kH, kT}, DType::kF64);
  forward(x, Shard{0, kT}, out, lse);
  Tensor dq = Tensor::empty(x.q.shape(), DType::kF64), dk = Tensor::empty(x.k.shape(), DType::kF64),
         dv = Tensor::empty(x.v.shape(), DType::kF64);
  backward(x, Shard{0, kT}, out, lse, dq, dk, dv);
  Tensor dk_sum = Tensor::zeros(x.k.shape(), DType::kF64), dv_sum = dk_sum.clone(), last_only;
  for (const Shard& s : shards()) {
    SCOPED_TRACE(testing::Message() << "queries [" << s.p0 << ", " << s.end << ")");
    const Inputs p = shard_of(x, s);
    const int64_t n = s.end - s.p0;
    Tensor o = Tensor::empty(p.q.shape(), DType::kF64),
           l = Tensor::empty({kBatch, kH, n}, DType::kF64);
    forward(p, s, o, l);
    EXPECT_LT(max_scaled_diff(o, slice_dim(out, 1, s.p0, s.end)), kTol);
    EXPECT_LT(max_scaled_diff(l, slice_dim(lse, 2, s.p0, s.end)), kTol);
    Tensor q_grad = Tensor::empty(p.q.shape(), DType::kF64),
           k_grad = Tensor::empty(p.k.shape(), DType::kF64),
           v_grad = Tensor::empty(p.v.shape(), DType::kF64);
    backward(p, s, o, l, q_grad, k_grad, v_grad);
    EXPECT_LT(max_scaled_diff(q_grad, slice_dim(dq, 1, s.p0, s.end)), kTol);
    add_prefix(dk_sum, k_grad);
    add_prefix(dv_sum, v_grad);
    last_only = Tensor::zeros(x.k.shape(), DType::kF64);
    add_prefix(last_only, k_grad);
  }
  EXPECT_LT(max_scaled_diff(dk_sum, dk), kTol);
  EXPECT_LT(max_scaled_diff(dv_sum, dv), kTol);
  // Not vacuous: the last shard's key gradients alone are not the full ones.
  EXPECT_GT(max_scaled_diff(last_only, dk), 1e-3);
}

TEST(KernelsQueryOffsetTest, DenseAttentionShardsEqualTheFullRowsAndSumToItsKeyGradients) {
  expect_shards_match_full(
      make_inputs(100),
      [](const Inputs& p, const Shard&, Tensor& out, Tensor& lse) {
        attention_forward(p.q, p.k, p.v, kScale, out, lse);
      },
      [](const Inputs& p, const Shard&, const Tensor& out, const Tensor& lse, Tensor& dq,
         Tensor& dk,
         Tensor& dv) { attention_backward(p.dout, p.q, p.k, p.v, out, lse, kScale, dq, dk, dv); });
}

BlockSelection select(const Inputs& p) {
  BlockSelection sel =
      BlockSelection::allocate(kBatch, p.iq.size(1), kG, kBlock, kTopk, Device::kCPU);
  msa_index_topk(p.iq, p.ik, sel);
  return sel;
}

TEST(KernelsQueryOffsetTest, SelectionOfAShardEqualsTheFullRows) {
  const Inputs x = make_inputs(200);
  const BlockSelection full = select(x);
  int64_t rows_with_a_choice = 0;
  for (const Shard& s : shards()) {
    const BlockSelection part = select(shard_of(x, s));
    EXPECT_EQ(part.indices.to_double_vector(),
              slice_dim(full.indices, 1, s.p0, s.end).to_double_vector())
        << "queries [" << s.p0 << ", " << s.end << ")";
    EXPECT_EQ(part.counts.to_double_vector(),
              slice_dim(full.counts, 1, s.p0, s.end).to_double_vector());
    for (double c : part.counts.to_double_vector()) rows_with_a_choice += c == kTopk;
  }
  EXPECT_GT(rows_with_a_choice, 0);  // some rows choose among more blocks than they keep
}

TEST(KernelsQueryOffsetTest, SparseAttentionShardsEqualTheFullRowsAndSumToItsKeyGradients) {
  auto forward = [](const Inputs& p, const Shard&, Tensor& out, Tensor& lse) {
    msa_sparse_attention_forward(p.q, p.k, p.v, select(p), kScale, out, lse);
  };
  auto backward = [](const Inputs& p, const Shard&, const Tensor& out, const Tensor& lse,
                     Tensor& dq, Tensor& dk, Tensor& dv) {
    msa_sparse_attention_backward(p.dout, p.q, p.k, p.v, out, lse, select(p), kScale, dq, dk, dv);
  };
  expect_shards_match_full(make_inputs(300), forward, backward);
}

// The index loss of each shard with weight 1 / kShards: its KL sum is its rows' share of the
// full sum, diq its rows of the full diq, and dik summed over the shards the full dik.
void expect_index_loss_shards_match(IndexLossMode mode) {
  const Inputs x = make_inputs(mode == IndexLossMode::kSparse ? 400 : 500);
  const double weight = 0.7;
  auto run = [&](const Inputs& p, double w, Tensor& diq, Tensor& dik) {
    const BlockSelection sel = select(p);
    Tensor out = Tensor::empty(p.q.shape(), DType::kF64),
           lse = Tensor::empty({kBatch, kH, p.q.size(1)}, DType::kF64);
    if (mode == IndexLossMode::kSparse)
      msa_sparse_attention_forward(p.q, p.k, p.v, sel, kScale, out, lse);
    else
      attention_forward(p.q, p.k, p.v, kScale, out, lse);
    return msa_index_loss(mode, p.q, p.k, lse, sel, p.iq, p.ik, kScale, w, diq, dik);
  };
  Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
         dik = Tensor::empty(x.ik.shape(), DType::kF64);
  const IndexLossResult full = run(x, weight, diq, dik);
  ASSERT_EQ(full.n_rows, kBatch * kT * kG);
  EXPECT_GT(full.loss, 0);
  Tensor dik_sum = Tensor::zeros(x.ik.shape(), DType::kF64);
  double kl_sum = 0;
  for (const Shard& s : shards()) {
    SCOPED_TRACE(testing::Message() << "queries [" << s.p0 << ", " << s.end << ")");
    const Inputs p = shard_of(x, s);
    Tensor q_grad = Tensor::empty(p.iq.shape(), DType::kF64),
           k_grad = Tensor::empty(p.ik.shape(), DType::kF64);
    const IndexLossResult r = run(p, weight / kShards, q_grad, k_grad);
    EXPECT_EQ(r.n_rows, kBatch * (s.end - s.p0) * kG);
    kl_sum += r.loss * static_cast<double>(r.n_rows);
    EXPECT_LT(max_scaled_diff(q_grad, slice_dim(diq, 1, s.p0, s.end)), kTol);
    add_prefix(dik_sum, k_grad);
  }
  EXPECT_LT(std::abs(kl_sum / full.n_rows - full.loss), kTol * full.loss);
  EXPECT_LT(max_scaled_diff(dik_sum, dik), kTol);
}

TEST(KernelsQueryOffsetTest, SparseIndexLossShardsShareTheFullLossAndGradients) {
  expect_index_loss_shards_match(IndexLossMode::kSparse);
}

TEST(KernelsQueryOffsetTest, DenseTargetIndexLossShardsShareTheFullLossAndGradients) {
  expect_index_loss_shards_match(IndexLossMode::kDenseTarget);
}

TEST(KernelsQueryOffsetTest, RecallOfTheShardsAveragesToTheFullRecall) {
  const Inputs x = make_inputs(600);
  const int64_t stride = 4;  // divides the shard length: the shards sample the full set
  const BlockSelection full_sel = select(x);
  const double full_recall = msa_index_recall(x.q, x.k, full_sel, kScale, stride);
  const double full_block = msa_block_recall(x.q, x.k, full_sel, kScale, stride);
  const double full_ceiling = msa_index_recall_ceiling(x.q, x.k, full_sel, kScale, stride);
  double recall = 0, block = 0, ceiling = 0;
  for (const Shard& s : shards()) {
    SCOPED_TRACE(testing::Message() << "shard at " << s.p0);
    const Inputs p = shard_of(x, s);
    const BlockSelection sel = select(p);
    const double shard_recall = msa_index_recall(p.q, p.k, sel, kScale, stride);
    const OracleRecall shard_oracle = msa_oracle_recall(p.q, p.k, sel, kScale, stride);
    // The ceiling bounds the shard's own recall (its queries sit at an offset into the keys).
    EXPECT_LE(shard_recall, shard_oracle.index_recall_ceiling + kTol);
    recall += shard_recall / kShards;
    block += shard_oracle.block_recall / kShards;
    ceiling += shard_oracle.index_recall_ceiling / kShards;
  }
  EXPECT_GT(full_recall, 0.0);
  EXPECT_LT(full_recall, 1.0);
  EXPECT_LT(full_ceiling, 1.0);
  EXPECT_GT(full_ceiling, full_recall);
  EXPECT_LT(std::abs(recall - full_recall), kTol);
  EXPECT_LT(std::abs(block - full_block), kTol);
  EXPECT_LT(std::abs(ceiling - full_ceiling), kTol);
}

}  // namespace
}  // namespace msa
