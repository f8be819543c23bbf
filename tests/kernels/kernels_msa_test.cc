// CPU reference MSA kernels (kernels/msa.h) against the independent plain-loop reference
// (tests/testing/msa_reference.h): max-pooled exp-free top-k (random inputs, exact ties, a
// one-token spike), block-sparse attention at k < n_b, the k >= n_b identity with dense
// attention, the token-level index loss in both modes (values and gradients), finite-difference
// checks of every backward, determinism under any thread count, recall and its ceiling,
// causality.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cpu/parallel.h"
#include "kernels/msa.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/msa_reference.h"

namespace msa {
namespace {

using test::bitwise_equal;
using test::gradcheck;
using test::max_scaled_diff;
using test::random_tensor;
using test::weighted_sum;

struct Case {
  int64_t batch, T, H, G, d, dI;
  int block_size, topk;
};

int64_t blocks(const Case& c) { return msa_num_blocks(c.T, c.block_size); }

test::ref::Sizes sizes(const Case& c) {
  test::ref::Sizes z;
  z.batch = c.batch;
  z.T = c.T;
  z.H = c.H;
  z.G = c.G;
  z.d = c.d;
  z.dI = c.dI;
  z.block_size = c.block_size;
  z.topk = c.topk;
  return z;
}

// Random inputs of one MSA layer; sel from the kernel's top-k on iq, ik.
struct Inputs {
  Tensor q, k, v, iq, ik;
  BlockSelection sel;
};

Inputs make_inputs(const Case& c, uint64_t seed, DType dtype = DType::kF64) {
  Inputs x;
  x.q = random_tensor({c.batch, c.T, c.H, c.d}, seed, dtype);
  x.k = random_tensor({c.batch, c.T, c.G, c.d}, seed + 1, dtype);
  x.v = random_tensor({c.batch, c.T, c.G, c.d}, seed + 2, dtype);
  x.iq = random_tensor({c.batch, c.T, c.G, c.dI}, seed + 3, dtype);
  x.ik = random_tensor({c.batch, c.T, c.dI}, seed + 4, dtype);
  x.sel = BlockSelection::allocate(c.batch, c.T, c.G, c.block_size, c.topk, Device::kCPU);
  msa_index_topk(x.iq, x.ik, x.sel);
  return x;
}

Tensor f64_from(const std::vector<double>& values, const Shape& shape) {
  return Tensor::from_vector<double>(shape, values);
}

// max_i |a_i - b_i| / max_i |b_i|: the error relative to the reference's largest entry (the index
// gradients are O(1 / n_rows), far below max_scaled_diff's floor of 1). +infinity on NaN/inf.
double max_rel_diff(const Tensor& a, const std::vector<double>& b) {
  const std::vector<double> x = a.to_double_vector();
  EXPECT_EQ(x.size(), b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < x.size() && i < b.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(b[i]))
      return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(x[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// ---- 1. selection -------------------------------------------------------------------------

// Asserts the kernel's selection equals the reference's, row by row and slot by slot (-1 padding
// included).
void expect_selection_equals(const BlockSelection& sel, const test::ref::Selection& want,
                             const Case& c) {
  const int32_t* idx = sel.indices.data<int32_t>();
  const int32_t* cnt = sel.counts.data<int32_t>();
  for (int64_t row = 0; row < c.batch * c.T * c.G; ++row) {
    const int64_t t = (row / c.G) % c.T;
    ASSERT_EQ(cnt[row], static_cast<int32_t>(want[row].size())) << "row " << row << " t=" << t;
    ASSERT_EQ(cnt[row], std::min<int64_t>(c.topk, t / c.block_size + 1)) << "row " << row;
    for (int64_t i = 0; i < c.topk; ++i) {
      const int32_t expected =
          i < static_cast<int64_t>(want[row].size()) ? static_cast<int32_t>(want[row][i]) : -1;
      ASSERT_EQ(idx[row * c.topk + i], expected) << "row " << row << " t=" << t << " slot " << i;
    }
  }
}

TEST(KernelsMsaTest, TopkMatchesReferenceOnRandomInputs) {
  const std::vector<Case> cases = {{2, 150, 4, 2, 4, 16, 16, 4},   // T % B != 0
                                   {1, 128, 4, 2, 4, 8, 8, 3},     // T % B == 0
                                   {2, 100, 4, 2, 4, 12, 12, 2}};  // one non-local block
  uint64_t seed = 10;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " B=" << c.block_size << " k=" << c.topk);
    for (DType dtype : {DType::kF64, DType::kF32}) {
      const Inputs x = make_inputs(c, seed, dtype);
      const auto iq = test::ref::values(x.iq), ik = test::ref::values(x.ik);
      const test::ref::Selection got = test::ref::selection_of(x.sel);
      if (dtype == DType::kF64) {
        // Random f64 scores have no near-ties: the selection is exactly the reference's.
        EXPECT_EQ(test::ref::selection_violation(got, iq, ik, sizes(c)), 0.0);
        expect_selection_equals(x.sel, test::ref::select_blocks(iq, ik, sizes(c)), c);
      } else {
        // f32 dots may order blocks whose exact scores are within rounding either way.
        EXPECT_LT(test::ref::selection_violation(got, iq, ik, sizes(c)), 1e-5);
      }
    }
    seed += 10;
  }
}

// Small integers make the dot products exact in f32 and f64, with many exact ties.
Tensor integer_tensor(const Shape& shape, uint64_t seed, int levels, DType dtype) {
  std::vector<double> v(shape_numel(shape));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<double>(static_cast<int>(philox4x32(seed, i).v[0] % levels) - levels / 2);
  return Tensor::from_vector<double>(shape, v).to(dtype);
}

void expect_integer_topk_matches_reference(const Case& c, uint64_t seed, int levels) {
  SCOPED_TRACE(testing::Message() << "T=" << c.T << " B=" << c.block_size << " k=" << c.topk
                                  << " levels=" << levels);
  for (DType dtype : {DType::kF32, DType::kF64}) {
    Tensor iq = integer_tensor({c.batch, c.T, c.G, c.dI}, seed, levels, dtype);
    Tensor ik = integer_tensor({c.batch, c.T, c.dI}, seed + 1, levels, dtype);
    BlockSelection sel =
        BlockSelection::allocate(c.batch, c.T, c.G, c.block_size, c.topk, Device::kCPU);
    msa_index_topk(iq, ik, sel);
    const auto iqv = test::ref::values(iq), ikv = test::ref::values(ik);
    expect_selection_equals(sel, test::ref::select_blocks(iqv, ikv, sizes(c)), c);
    if (levels <= 3 && c.T > 3 * c.block_size) {
      // The case is meant to exercise ties: count rows whose eligible block maxima repeat.
      int64_t rows_with_ties = 0;
      for (int64_t t = 0; t < c.T; ++t) {
        std::vector<double> M = test::ref::block_scores(iqv, ikv, sizes(c), 0, t, 0);
        M.pop_back();  // the local block is not ranked
        std::sort(M.begin(), M.end());
        rows_with_ties += std::adjacent_find(M.begin(), M.end()) != M.end();
      }
      EXPECT_GT(rows_with_ties, 0) << "the case had no ties";
    }
  }
}

TEST(KernelsMsaTest, TopkMatchesReferenceExactlyWithTies) {
  expect_integer_topk_matches_reference({2, 70, 4, 2, 4, 3, 4, 5}, 1, 3);   // T % B != 0
  expect_integer_topk_matches_reference({1, 64, 4, 2, 4, 2, 8, 3}, 2, 3);   // T % B == 0
  expect_integer_topk_matches_reference({2, 90, 4, 2, 4, 8, 8, 4}, 3, 2);   // ties everywhere
  expect_integer_topk_matches_reference({2, 50, 4, 2, 4, 4, 3, 6}, 4, 41);  // few ties
}

TEST(KernelsMsaTest, TopkShortSequencesAndRowsWithFewEligibleBlocks) {
  expect_integer_topk_matches_reference({2, 5, 4, 2, 4, 3, 8, 4}, 5, 3);    // T < B
  expect_integer_topk_matches_reference({1, 8, 4, 2, 4, 3, 8, 4}, 6, 3);    // T = B
  expect_integer_topk_matches_reference({1, 30, 4, 2, 4, 3, 4, 16}, 7, 5);  // k > n_b
  expect_integer_topk_matches_reference({1, 30, 4, 2, 4, 3, 4, 1}, 8, 5);   // k = 1
}

// The point of max pooling: one token that matches the query makes its block win, even when the
// rest of the block (and so its mean-pooled key) scores lowest of all.
TEST(KernelsMsaTest, TopkOneTokenSpikeSelectsItsBlock) {
  const Case c{1, 96, 2, 1, 2, 8, 8, 2};  // 12 blocks, one non-local slot
  const int64_t spike_block = 3, spike_token = spike_block * c.block_size + 5;
  std::vector<double> e(c.dI);
  for (int64_t i = 0; i < c.dI; ++i) e[i] = (i % 2 ? 1.0 : -1.0) * (1.0 + 0.1 * i);
  std::vector<double> iq(c.T * c.dI), ik(c.T * c.dI);
  std::vector<double> factor(c.T);
  for (int64_t s = 0; s < c.T; ++s) {
    const int64_t j = s / c.block_size;
    // Every block scores iq.ik = factor |e|^2 with factor 0.5 + 0.01 j, except the spike block:
    // -1 everywhere but one token at +3.
    factor[s] = j == spike_block ? (s == spike_token ? 3.0 : -1.0) : 0.5 + 0.01 * j;
    for (int64_t i = 0; i < c.dI; ++i) {
      iq[s * c.dI + i] = e[i];
      ik[s * c.dI + i] = factor[s] * e[i];
    }
  }
  // Mean pooling would rank the spike block last of all.
  double spike_mean = 0;
  for (int64_t s = spike_block * c.block_size; s < (spike_block + 1) * c.block_size; ++s)
    spike_mean += factor[s] / c.block_size;
  ASSERT_LT(spike_mean, 0.5);
  for (DType dtype : {DType::kF32, DType::kF64}) {
    Tensor tiq = f64_from(iq, {1, c.T, 1, c.dI}).to(dtype);
    Tensor tik = f64_from(ik, {1, c.T, c.dI}).to(dtype);
    BlockSelection sel = BlockSelection::allocate(1, c.T, 1, c.block_size, c.topk, Device::kCPU);
    msa_index_topk(tiq, tik, sel);
    for (int64_t t = (spike_block + 1) * c.block_size; t < c.T; ++t) {
      ASSERT_EQ(sel.counts.data<int32_t>()[t], 2) << "t=" << t;
      EXPECT_EQ(sel.indices.data<int32_t>()[t * 2], spike_block) << "t=" << t;
      EXPECT_EQ(sel.indices.data<int32_t>()[t * 2 + 1], t / c.block_size) << "t=" << t;
    }
    // Before the spike block is complete, the best earlier block is the highest-factor one.
    const int64_t t = spike_block * c.block_size + 2;  // c(t) = 3, spike at offset 5 > 2
    EXPECT_EQ(sel.indices.data<int32_t>()[t * 2], spike_block - 1);
  }
}

// A NaN score never wins a block's max (a NaN-only block scores -inf): the selection stays a
// valid top-k of the finite scores.
TEST(KernelsMsaTest, TopkNaNScoresNeverWin) {
  const Case c{1, 64, 2, 2, 2, 8, 8, 3};
  Inputs x = make_inputs(c, 90);
  double* ik = x.ik.data<double>();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Every token of block 1, and one token of block 5.
  for (int64_t s = 8; s < 16; ++s) ik[s * c.dI] = nan;
  ik[40 * c.dI + 2] = nan;
  msa_index_topk(x.iq, x.ik, x.sel);
  expect_selection_equals(
      x.sel, test::ref::select_blocks(test::ref::values(x.iq), test::ref::values(x.ik), sizes(c)),
      c);
  // Block 1 (all NaN) is chosen only when fewer than k - 1 finite blocks exist, i.e. never here
  // once c(t) >= 3.
  for (int64_t row = 0; row < c.T * c.G; ++row) {
    const int64_t t = row / c.G;
    if (t / c.block_size < 3) continue;
    for (int i = 0; i < x.sel.counts.data<int32_t>()[row]; ++i)
      EXPECT_NE(x.sel.indices.data<int32_t>()[row * c.topk + i], 1) << "t=" << t;
  }
}

// ---- 2. block-sparse attention -----------------------------------------------------------

TEST(KernelsMsaTest, SparseAttentionMatchesIndependentReference) {
  const Case c{2, 160, 4, 2, 8, 8, 16, 3};  // 10 blocks, 3 selected
  ASSERT_LT(c.topk, blocks(c));
  const Inputs x = make_inputs(c, 100);
  const test::ref::Sizes z = sizes(c);
  const test::ref::Selection want =
      test::ref::select_blocks(test::ref::values(x.iq), test::ref::values(x.ik), z);
  expect_selection_equals(x.sel, want, c);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  Tensor out = Tensor::empty(x.q.shape(), DType::kF64),
         lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF64);
  msa_sparse_attention_forward(x.q, x.k, x.v, x.sel, scale, out, lse);
  const auto q = test::ref::values(x.q), k = test::ref::values(x.k), v = test::ref::values(x.v);
  const test::ref::Attention ref =
      test::ref::attention(q, k, v, test::ref::sparse_token_sets(want, z), z, scale);
  const double out_err = max_scaled_diff(out, f64_from(ref.out, x.q.shape()));
  const double lse_err = max_scaled_diff(lse, f64_from(ref.lse, lse.shape()));
  EXPECT_LT(out_err, 1e-12);
  EXPECT_LT(lse_err, 1e-12);
  // The sparse result is not the dense one (the test would be vacuous otherwise).
  const test::ref::Attention dense =
      test::ref::attention(q, k, v, test::ref::dense_token_sets(z), z, scale);
  const double sparse_vs_dense = max_scaled_diff(out, f64_from(dense.out, x.q.shape()));
  EXPECT_GT(sparse_vs_dense, 1e-3);
  std::printf(
      "sparse attention (T=%lld, k=%d of %lld blocks): out err %.3g, lse err %.3g; "
      "lse[0,0,T-1] kernel %.15f reference %.15f; |sparse - dense| %.3g\n",
      static_cast<long long>(c.T), c.topk, static_cast<long long>(blocks(c)), out_err, lse_err,
      lse.data<double>()[c.T - 1], ref.lse[c.T - 1], sparse_vs_dense);
}

TEST(KernelsMsaTest, AllBlocksSelectedEqualsDenseAttention) {
  // T not a multiple of B; H:G = 1:1, 2:1, 3:1, 4:1 (MQA).
  const std::vector<Case> cases = {{2, 70, 4, 2, 8, 8, 16, 5},
                                   {1, 64, 4, 4, 4, 8, 8, 8},
                                   {2, 45, 6, 2, 6, 8, 8, 6},
                                   {1, 50, 4, 1, 8, 8, 10, 9}};
  uint64_t seed = 200;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " H=" << c.H << " G=" << c.G);
    ASSERT_GE(c.topk, blocks(c));
    const Inputs x = make_inputs(c, seed);
    Tensor dout = random_tensor(x.q.shape(), seed + 9);
    seed += 10;
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    Tensor out_s = Tensor::empty(x.q.shape(), DType::kF64),
           lse_s = Tensor::empty({c.batch, c.H, c.T}, DType::kF64);
    Tensor out_d = out_s.clone(), lse_d = lse_s.clone();
    msa_sparse_attention_forward(x.q, x.k, x.v, x.sel, scale, out_s, lse_s);
    attention_forward(x.q, x.k, x.v, scale, out_d, lse_d);
    Tensor dq_s = Tensor::empty(x.q.shape(), DType::kF64),
           dk_s = Tensor::empty(x.k.shape(), DType::kF64),
           dv_s = Tensor::empty(x.v.shape(), DType::kF64);
    Tensor dq_d = dq_s.clone(), dk_d = dk_s.clone(), dv_d = dv_s.clone();
    msa_sparse_attention_backward(dout, x.q, x.k, x.v, out_s, lse_s, x.sel, scale, dq_s, dk_s,
                                  dv_s);
    attention_backward(dout, x.q, x.k, x.v, out_d, lse_d, scale, dq_d, dk_d, dv_d);
    EXPECT_LT(max_scaled_diff(out_s, out_d), 1e-12);
    EXPECT_LT(max_scaled_diff(lse_s, lse_d), 1e-12);
    EXPECT_LT(max_scaled_diff(dq_s, dq_d), 1e-12);
    EXPECT_LT(max_scaled_diff(dk_s, dk_d), 1e-12);
    EXPECT_LT(max_scaled_diff(dv_s, dv_d), 1e-12);
  }
}

TEST(KernelsMsaTest, SparseAttentionBackwardMatchesFiniteDifferences) {
  for (const Case& c : {Case{2, 40, 4, 2, 4, 8, 8, 3}, Case{1, 33, 6, 2, 3, 8, 5, 2}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " H=" << c.H << " G=" << c.G);
    Inputs x = make_inputs(c, 300);  // the selection is held fixed
    Tensor w = random_tensor(x.q.shape(), 305);
    const double scale = 0.7;
    Tensor out = Tensor::empty(x.q.shape(), DType::kF64),
           lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF64);
    auto loss = [&]() {
      msa_sparse_attention_forward(x.q, x.k, x.v, x.sel, scale, out, lse);
      return weighted_sum(out, w);
    };
    loss();
    Tensor dq = Tensor::empty(x.q.shape(), DType::kF64),
           dk = Tensor::empty(x.k.shape(), DType::kF64),
           dv = Tensor::empty(x.v.shape(), DType::kF64);
    msa_sparse_attention_backward(w, x.q, x.k, x.v, out, lse, x.sel, scale, dq, dk, dv);
    auto rq = gradcheck(x.q, dq, loss);
    auto rk = gradcheck(x.k, dk, loss);
    auto rv = gradcheck(x.v, dv, loss);
    EXPECT_LT(rq.max_rel_error, 1e-6) << "dq: " << rq;
    EXPECT_LT(rk.max_rel_error, 1e-6) << "dk: " << rk;
    EXPECT_LT(rv.max_rel_error, 1e-6) << "dv: " << rv;
  }
}

// ---- 3. index distillation loss ----------------------------------------------------------

// The main branch's lse for the mode: sparse attention over sel, or dense attention.
Tensor main_branch_lse(IndexLossMode mode, const Inputs& x, double scale) {
  Tensor out = Tensor::empty(x.q.shape(), x.q.dtype()),
         lse = Tensor::empty({x.q.size(0), x.q.size(2), x.q.size(1)}, x.q.dtype());
  if (mode == IndexLossMode::kSparse) {
    msa_sparse_attention_forward(x.q, x.k, x.v, x.sel, scale, out, lse);
  } else {
    attention_forward(x.q, x.k, x.v, scale, out, lse);
  }
  return lse;
}

const char* mode_name(IndexLossMode mode) {
  return mode == IndexLossMode::kSparse ? "sparse" : "dense-target";
}

TEST(KernelsMsaTest, IndexLossMatchesIndependentReference) {
  const Case c{2, 128, 4, 2, 8, 16, 16, 3};  // 8 blocks, 3 selected
  ASSERT_LT(c.topk, blocks(c));
  const test::ref::Sizes z = sizes(c);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d)), weight = 0.7;
  for (IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
    SCOPED_TRACE(mode_name(mode));
    const Inputs x = make_inputs(c, 400);
    const Tensor lse = main_branch_lse(mode, x, scale);
    Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
           dik = Tensor::empty(x.ik.shape(), DType::kF64);
    const IndexLossResult got =
        msa_index_loss(mode, x.q, x.k, lse, x.sel, x.iq, x.ik, scale, weight, diq, dik);
    const test::ref::TokenSets U =
        mode == IndexLossMode::kSparse
            ? test::ref::sparse_token_sets(
                  test::ref::select_blocks(test::ref::values(x.iq), test::ref::values(x.ik), z), z)
            : test::ref::dense_token_sets(z);
    const test::ref::IndexLoss want = test::ref::index_loss(
        test::ref::values(x.q), test::ref::values(x.k), test::ref::values(lse),
        test::ref::values(x.iq), test::ref::values(x.ik), U, z, scale, weight);
    EXPECT_EQ(got.n_rows, c.batch * c.T * c.G);
    EXPECT_NEAR(got.loss, want.loss, 1e-12 * std::max(1.0, want.loss));
    EXPECT_GT(want.loss, 0.01);  // random indexers disagree with the teacher
    const double diq_err = max_rel_diff(diq, want.diq);
    const double dik_err = max_rel_diff(dik, want.dik);
    EXPECT_LT(diq_err, 1e-12);
    EXPECT_LT(dik_err, 1e-12);
    std::printf(
        "index loss (%s, T=%lld, k=%d of %lld blocks, weight %.1f): kernel %.15f "
        "reference %.15f; diq err %.3g, dik err %.3g\n",
        mode_name(mode), static_cast<long long>(c.T), c.topk, static_cast<long long>(blocks(c)),
        weight, got.loss, want.loss, diq_err, dik_err);

    // The f32 kernel on the same (f32-rounded) inputs, against the f64 reference of those inputs.
    Inputs x32{x.q.to(DType::kF32),  x.k.to(DType::kF32),  x.v.to(DType::kF32),
               x.iq.to(DType::kF32), x.ik.to(DType::kF32), x.sel};
    const Tensor lse32 = lse.to(DType::kF32);
    Tensor diq32 = Tensor::empty(x.iq.shape(), DType::kF32),
           dik32 = Tensor::empty(x.ik.shape(), DType::kF32);
    const IndexLossResult got32 = msa_index_loss(mode, x32.q, x32.k, lse32, x.sel, x32.iq, x32.ik,
                                                 scale, weight, diq32, dik32);
    const test::ref::IndexLoss want32 = test::ref::index_loss(
        test::ref::values(x32.q), test::ref::values(x32.k), test::ref::values(lse32),
        test::ref::values(x32.iq), test::ref::values(x32.ik), U, z, scale, weight);
    EXPECT_NEAR(got32.loss, want32.loss, 1e-5 * std::max(1.0, want32.loss));
    EXPECT_LT(max_rel_diff(diq32, want32.diq), 1e-4);
    EXPECT_LT(max_rel_diff(dik32, want32.dik), 1e-4);
  }
}

void check_index_loss_gradients(IndexLossMode mode) {
  const Case c{2, 40, 4, 2, 4, 8, 8, 3};  // 5 blocks, 3 selected; the selection is held fixed
  Inputs x = make_inputs(c, 500);
  const double scale = 0.5, weight = 0.7;
  const Tensor lse = main_branch_lse(mode, x, scale);
  Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
         dik = Tensor::empty(x.ik.shape(), DType::kF64);
  Tensor scratch_q = diq.clone(), scratch_k = dik.clone();
  auto loss = [&]() {
    return weight *
           msa_index_loss(mode, x.q, x.k, lse, x.sel, x.iq, x.ik, scale, 1.0, scratch_q, scratch_k)
               .loss;
  };
  const IndexLossResult r =
      msa_index_loss(mode, x.q, x.k, lse, x.sel, x.iq, x.ik, scale, weight, diq, dik);
  ASSERT_GT(r.loss, 0.0);
  auto rq = gradcheck(x.iq, diq, loss);
  auto rk = gradcheck(x.ik, dik, loss);
  EXPECT_LT(rq.max_rel_error, 1e-6) << "diq: " << rq;
  EXPECT_LT(rk.max_rel_error, 1e-6) << "dik: " << rk;
  EXPECT_GT(rq.max_abs_grad, 1e-6);
  EXPECT_GT(rk.max_abs_grad, 1e-6);
}

TEST(KernelsMsaTest, SparseIndexLossGradientMatchesFiniteDifferences) {
  check_index_loss_gradients(IndexLossMode::kSparse);
}

TEST(KernelsMsaTest, DenseTargetIndexLossGradientMatchesFiniteDifferences) {
  check_index_loss_gradients(IndexLossMode::kDenseTarget);
}

// With every block selected the sparse support is the dense one: both modes agree given the same
// (dense) lse.
TEST(KernelsMsaTest, DenseTargetLossEqualsSparseLossWhenEveryBlockIsSelected) {
  const Case c{2, 60, 4, 2, 8, 8, 8, 8};
  ASSERT_GE(c.topk, blocks(c));
  const Inputs x = make_inputs(c, 600);
  const double scale = 0.4;
  const Tensor lse = main_branch_lse(IndexLossMode::kDenseTarget, x, scale);
  Tensor diq_s = Tensor::empty(x.iq.shape(), DType::kF64),
         dik_s = Tensor::empty(x.ik.shape(), DType::kF64);
  Tensor diq_d = diq_s.clone(), dik_d = dik_s.clone();
  const IndexLossResult s = msa_index_loss(IndexLossMode::kSparse, x.q, x.k, lse, x.sel, x.iq, x.ik,
                                           scale, 1.0, diq_s, dik_s);
  const IndexLossResult d = msa_index_loss(IndexLossMode::kDenseTarget, x.q, x.k, lse,
                                           BlockSelection{}, x.iq, x.ik, scale, 1.0, diq_d, dik_d);
  EXPECT_GT(d.loss, 0.0);
  EXPECT_NEAR(s.loss, d.loss, 1e-12 * d.loss);
  EXPECT_EQ(s.n_rows, d.n_rows);
  EXPECT_LT(max_rel_diff(diq_s, diq_d.to_double_vector()), 1e-12);
  EXPECT_LT(max_rel_diff(dik_s, dik_d.to_double_vector()), 1e-12);
}

// KL(P || Q) >= 0 on every row; = 0 (with zero gradient) when the student's scores are the
// teacher's logits: iq_{t,g} = sqrt(dI) scale q_{t,h}, ik_s = k_s (dI = d, both heads of a group
// sharing q, every group sharing k, so that P is one softmax and Q the same one).
TEST(KernelsMsaTest, IndexLossIsNonNegativeAndZeroWhenStudentEqualsTeacher) {
  const Case c{2, 64, 4, 2, 8, 8, 8, 3};
  const double scale = 0.6;
  for (IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
    SCOPED_TRACE(mode_name(mode));
    Inputs x = make_inputs(c, 700);
    // Random inputs: every row's KL >= 0 (reference), the mean > 0 (kernel).
    {
      const Tensor lse = main_branch_lse(mode, x, scale);
      Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
             dik = Tensor::empty(x.ik.shape(), DType::kF64);
      const IndexLossResult r =
          msa_index_loss(mode, x.q, x.k, lse, x.sel, x.iq, x.ik, scale, 1.0, diq, dik);
      EXPECT_GT(r.loss, 0.0);
      const test::ref::Sizes z = sizes(c);
      const test::ref::TokenSets U =
          mode == IndexLossMode::kSparse
              ? test::ref::sparse_token_sets(test::ref::selection_of(x.sel), z)
              : test::ref::dense_token_sets(z);
      const test::ref::IndexLoss want = test::ref::index_loss(
          test::ref::values(x.q), test::ref::values(x.k), test::ref::values(lse),
          test::ref::values(x.iq), test::ref::values(x.ik), U, z, scale, 1.0);
      for (double kl : want.row_kl) ASSERT_GE(kl, -1e-15);
    }
    // Student == teacher.
    double* q = x.q.data<double>();
    double* k = x.k.data<double>();
    double* iq = x.iq.data<double>();
    double* ik = x.ik.data<double>();
    const int64_t r = c.H / c.G;
    for (int64_t bt = 0; bt < c.batch * c.T; ++bt) {
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t e = 0; e < c.d; ++e)
          q[(bt * c.H + h) * c.d + e] = q[(bt * c.H + (h / r) * r) * c.d + e];
      for (int64_t g = 0; g < c.G; ++g)
        for (int64_t e = 0; e < c.d; ++e) {
          k[(bt * c.G + g) * c.d + e] = k[bt * c.G * c.d + e];
          iq[(bt * c.G + g) * c.dI + e] =
              std::sqrt(static_cast<double>(c.dI)) * scale * q[(bt * c.H + g * r) * c.d + e];
        }
      for (int64_t e = 0; e < c.dI; ++e) ik[bt * c.dI + e] = k[bt * c.G * c.d + e];
    }
    const Tensor lse = main_branch_lse(mode, x, scale);
    Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
           dik = Tensor::empty(x.ik.shape(), DType::kF64);
    const IndexLossResult res =
        msa_index_loss(mode, x.q, x.k, lse, x.sel, x.iq, x.ik, scale, 1.0, diq, dik);
    EXPECT_NEAR(res.loss, 0.0, 1e-13);
    EXPECT_LT(max_scaled_diff(diq, Tensor::zeros(diq.shape(), DType::kF64)), 1e-13);
    EXPECT_LT(max_scaled_diff(dik, Tensor::zeros(dik.shape(), DType::kF64)), 1e-13);
  }
}

// One task per (b, g) and a fixed-order sum over the groups: bit-identical for any thread count.
TEST(KernelsMsaTest, SelectionAndIndexLossAreDeterministicUnderAnyThreadCount) {
  const Case c{3, 96, 4, 2, 8, 8, 8, 4};
  const double scale = 0.5;
  for (IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
    SCOPED_TRACE(mode_name(mode));
    Tensor ref_idx, ref_diq, ref_dik;
    double ref_loss = 0;
    for (int threads : {1, 2, 3, 5}) {
      cpu::set_num_threads(threads);
      const Inputs x = make_inputs(c, 800, DType::kF32);
      const Tensor lse = main_branch_lse(mode, x, scale);
      Tensor diq = Tensor::empty(x.iq.shape(), DType::kF32),
             dik = Tensor::empty(x.ik.shape(), DType::kF32);
      const IndexLossResult r =
          msa_index_loss(mode, x.q, x.k, lse, x.sel, x.iq, x.ik, scale, 1.0, diq, dik);
      if (threads == 1) {
        ref_idx = x.sel.indices;
        ref_diq = diq;
        ref_dik = dik;
        ref_loss = r.loss;
      } else {
        EXPECT_TRUE(bitwise_equal(x.sel.indices, ref_idx)) << threads << " threads";
        EXPECT_TRUE(bitwise_equal(diq, ref_diq)) << threads << " threads";
        EXPECT_TRUE(bitwise_equal(dik, ref_dik)) << threads << " threads";
        EXPECT_EQ(r.loss, ref_loss) << threads << " threads";
      }
    }
    cpu::set_num_threads(0);
  }
}

// ---- 4. recall ---------------------------------------------------------------------------

TEST(KernelsMsaTest, RecallIsOneWithEveryBlockAndMatchesReferenceWhenSparse) {
  const Case full{1, 40, 4, 2, 4, 8, 8, 5}, sparse{2, 96, 4, 2, 4, 8, 8, 3};
  for (const Case& c : {full, sparse}) {
    SCOPED_TRACE(testing::Message() << "k=" << c.topk << " n_b=" << blocks(c));
    const Inputs x = make_inputs(c, 900, DType::kF32);
    const Tensor q = random_tensor(x.q.shape(), 901, DType::kF32, 2.0f);
    const Tensor k = random_tensor(x.k.shape(), 902, DType::kF32, 2.0f);
    const double scale = 0.5;
    const int64_t stride = 3;
    const double recall = msa_index_recall(q, k, x.sel, scale, stride);
    const double block_recall = msa_block_recall(q, k, x.sel, scale, stride);
    const test::ref::Sizes z = sizes(c);
    const auto qv = test::ref::values(q), kv = test::ref::values(k);
    if (c.topk >= blocks(c)) {
      EXPECT_NEAR(recall, 1.0, 1e-12);
      EXPECT_EQ(block_recall, 1.0);
      EXPECT_NEAR(msa_index_recall_ceiling(q, k, x.sel, scale, stride), 1.0, 1e-12);
    } else {
      EXPECT_GT(recall, 0.0);
      EXPECT_LT(recall, 1.0);
      EXPECT_GT(block_recall, 0.0);
      EXPECT_LT(block_recall, 1.0);
      EXPECT_NEAR(block_recall,
                  test::ref::block_recall(test::ref::selection_of(x.sel), qv, kv, z, scale, stride),
                  1e-12);
      // The oracle selection itself has block recall 1.
      const BlockSelection oracle =
          test::ref::to_block_selection(test::ref::attention_oracle(qv, kv, z, scale), z);
      EXPECT_EQ(msa_block_recall(q, k, oracle, scale, stride), 1.0);
    }
  }
}

// The recalls over an explicit set of queries (e.g. a task's answer positions) against the
// plain-loop reference, on random inputs: several batch rows, queries out of order and one twice,
// f32 and f64 inputs, every head of a group averaged.
TEST(KernelsMsaTest, RecallAtGivenQueriesMatchesReference) {
  const Case c{3, 70, 4, 2, 3, 6, 8, 3};  // 9 blocks, k 3: most rows miss some blocks
  const test::ref::Sizes z = sizes(c);
  const std::vector<RecallQuery> queries = {{2, 69}, {0, 45}, {1, 0}, {0, 9}, {2, 33}, {0, 45}};
  test::ref::Queries ref_queries;
  for (const RecallQuery& x : queries) ref_queries.emplace_back(x.batch, x.t);
  for (DType dtype : {DType::kF64, DType::kF32}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Inputs x = make_inputs(c, 910, dtype);
    const Tensor q = random_tensor(x.q.shape(), 911, dtype, 2.0f);
    const Tensor k = random_tensor(x.k.shape(), 912, dtype, 2.0f);
    const double scale = 0.5;
    const auto qv = test::ref::values(q), kv = test::ref::values(k);
    const test::ref::Selection sel = test::ref::selection_of(x.sel);
    const double index = msa_index_recall(q, k, x.sel, scale, queries);
    const double block = msa_block_recall(q, k, x.sel, scale, queries);
    const double want_index = test::ref::index_recall(sel, qv, kv, z, scale, ref_queries);
    const double want_block = test::ref::block_recall(sel, qv, kv, z, scale, ref_queries);
    // f32 inputs are widened to f64 exactly: both sides compute in double.
    EXPECT_LT(test::scaled_diff(index, want_index), 1e-12) << index << " vs " << want_index;
    EXPECT_LT(test::scaled_diff(block, want_block), 1e-12) << block << " vs " << want_block;
    // Not trivially 0 or 1 (the comparison above would then prove little).
    EXPECT_GT(want_index, 0.05);
    EXPECT_LT(want_index, 0.95);
    EXPECT_GT(want_block, 0.05);
    EXPECT_LT(want_block, 0.95);
    // A different set of queries measures something else.
    const std::vector<RecallQuery> others = {{0, 60}, {1, 50}};
    EXPECT_NE(msa_index_recall(q, k, x.sel, scale, others), index);
    // The strided recall is the recall at the strided queries, to the bit, and matches the
    // reference's strided mean.
    for (int64_t stride : {1, 4, 7}) {
      const std::vector<RecallQuery> strided = strided_recall_queries(c.batch, c.T, stride);
      const test::ref::Queries ref_strided = test::ref::strided_queries(z, stride);
      ASSERT_EQ(strided.size(), ref_strided.size());
      for (size_t i = 0; i < strided.size(); ++i) {
        EXPECT_EQ(strided[i].batch, ref_strided[i].first) << i;
        EXPECT_EQ(strided[i].t, ref_strided[i].second) << i;
      }
      EXPECT_EQ(strided_recall_count(c.T, stride) * c.batch, static_cast<int64_t>(strided.size()));
      EXPECT_EQ(msa_index_recall(q, k, x.sel, scale, stride),
                msa_index_recall(q, k, x.sel, scale, strided));
      EXPECT_EQ(msa_block_recall(q, k, x.sel, scale, stride),
                msa_block_recall(q, k, x.sel, scale, strided));
      EXPECT_LT(test::scaled_diff(msa_index_recall(q, k, x.sel, scale, stride),
                                  test::ref::index_recall(sel, qv, kv, z, scale, ref_strided)),
                1e-12);
    }
  }
}

// The recalls are computed one (query, group) row per task and summed in a fixed order: one
// sequence sampled at a few queries (a long sequence's measurement) gives the same four values,
// to the bit, on one thread and on several, and they are not trivially 0 or 1.
TEST(KernelsMsaTest, RecallIsTheSameOnAnyNumberOfThreads) {
  const Case c{1, 1500, 4, 2, 32, 8, 64, 4};  // 24 blocks, k 4
  const Inputs x = make_inputs(c, 930, DType::kF64);
  const Tensor q = random_tensor(x.q.shape(), 931, DType::kF64, 2.0f);
  const Tensor k = random_tensor(x.k.shape(), 932, DType::kF64, 2.0f);
  auto measure = [&](int threads) {
    cpu::set_num_threads(threads);
    const OracleRecall r = msa_oracle_recall(q, k, x.sel, 0.5, /*query_stride=*/50);
    cpu::set_num_threads(0);
    return r;
  };
  const OracleRecall one = measure(1);
  for (int threads : {2, 7}) {
    const OracleRecall many = measure(threads);
    EXPECT_EQ(many.index_recall, one.index_recall) << threads << " threads";
    EXPECT_EQ(many.block_recall, one.block_recall) << threads << " threads";
    EXPECT_EQ(many.index_recall_ceiling, one.index_recall_ceiling) << threads << " threads";
    EXPECT_EQ(many.max_pool_recall_ceiling, one.max_pool_recall_ceiling) << threads << " threads";
  }
  for (double v : {one.index_recall, one.block_recall, one.index_recall_ceiling,
                   one.max_pool_recall_ceiling}) {
    EXPECT_GT(v, 0.05);
    EXPECT_LT(v, 0.999);
  }
}

// The strided sample sees every offset within a block alike, also when the stride is a multiple
// of the block size (the sample was once t = 0, stride, 2 stride, ...: block starts only, where the
// local block holds one token), one query per window; and T queries at an offset into the keys
// (a context-parallel shard) sample exactly the whole sequence's positions among them.
TEST(KernelsMsaTest, StridedRecallSampleCoversEveryOffsetWithinABlock) {
  const int64_t B = 64, stride = 64, T = 64 * 64;
  const std::vector<RecallQuery> all = strided_recall_queries(1, T, stride);
  ASSERT_EQ(all.size(), static_cast<size_t>(T / stride));
  std::vector<int> per_eighth(8, 0);
  double mean_offset = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].t / stride, static_cast<int64_t>(i)) << "one query per window";
    ++per_eighth[(all[i].t % B) * 8 / B];
    mean_offset += static_cast<double>(all[i].t % B) / static_cast<double>(all.size());
  }
  for (int e = 0; e < 8; ++e) {
    EXPECT_GE(per_eighth[e], 6) << "eighth " << e;
    EXPECT_LE(per_eighth[e], 10) << "eighth " << e;
  }
  EXPECT_NEAR(mean_offset, (B - 1) / 2.0, 2.0);
  // Shards at any offsets, lengths not multiples of the stride.
  for (int64_t s : {int64_t{1}, int64_t{5}, int64_t{64}}) {
    const int64_t len = 1000;
    const std::vector<RecallQuery> whole = strided_recall_queries(1, len, s);
    std::vector<int64_t> joined;
    for (const auto& [begin, end] :
         {std::pair<int64_t, int64_t>{0, 333}, {333, 640}, {640, 1000}}) {
      const std::vector<RecallQuery> part = strided_recall_queries(1, end - begin, s, begin);
      EXPECT_EQ(static_cast<int64_t>(part.size()), strided_recall_count(end - begin, s, begin));
      for (const RecallQuery& x : part) {
        EXPECT_LT(x.t, end - begin);
        joined.push_back(begin + x.t);
      }
    }
    ASSERT_EQ(joined.size(), whole.size()) << "stride " << s;
    for (size_t i = 0; i < whole.size(); ++i) EXPECT_EQ(joined[i], whole[i].t) << i;
  }
  EXPECT_EQ(strided_recall_count(10, 1), 10);
}

// A case small enough to work out by hand. T 6, B 2 (blocks {0,1} {2,3} {4,5}), k 2, one head,
// d 1, q = 1, scale 1, k_s = log w_s: the dense attention of query t is w_s / sum_{s' <= t} w_s'.
//   row 0: w = 1 1 4 2 1 1. t = 5: block masses 2, 6, 2 of 10; selected {0, 2}: index recall
//          4/10; the attention's own top-2 is {1, 2}: block recall 1/2. t = 4: masses 2, 6, 1 of
//          9; selected {1, 2}: 7/9, block recall 1.
//   row 1: w = 1 everywhere. t = 5: masses 2, 2, 2 of 6; selected {1, 2}: 4/6; the tie goes to
//          the lower block, top-2 = {0, 2}: block recall 1/2.
TEST(KernelsMsaTest, RecallAtGivenQueriesByHand) {
  const int64_t batch = 2, T = 6;
  const std::vector<double> w = {1, 1, 4, 2, 1, 1, /*row 1*/ 1, 1, 1, 1, 1, 1};
  std::vector<double> kv(w.size());
  for (size_t i = 0; i < w.size(); ++i) kv[i] = std::log(w[i]);
  const Tensor q = Tensor::from_vector<double>({batch, T, 1, 1}, std::vector<double>(12, 1.0));
  const Tensor k = Tensor::from_vector<double>({batch, T, 1, 1}, kv);
  // Every row selects its local block and the one before it, except the three rows above.
  test::ref::Selection chosen(batch * T);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t c = t / 2;
      chosen[b * T + t] = c == 0 ? std::vector<int64_t>{0} : std::vector<int64_t>{c - 1, c};
    }
  chosen[0 * T + 5] = {0, 2};
  chosen[0 * T + 4] = {1, 2};
  chosen[1 * T + 5] = {1, 2};
  test::ref::Sizes z;
  z.batch = batch;
  z.T = T;
  z.block_size = 2;
  z.topk = 2;
  const BlockSelection sel = test::ref::to_block_selection(chosen, z);
  auto near = [](double got, double want) { return test::scaled_diff(got, want) < 1e-12; };
  EXPECT_PRED2(near, msa_index_recall(q, k, sel, 1.0, {{0, 5}}), 0.4);
  EXPECT_PRED2(near, msa_block_recall(q, k, sel, 1.0, {{0, 5}}), 0.5);
  EXPECT_PRED2(near, msa_index_recall(q, k, sel, 1.0, {{0, 4}}), 7.0 / 9.0);
  EXPECT_PRED2(near, msa_block_recall(q, k, sel, 1.0, {{0, 4}}), 1.0);
  EXPECT_PRED2(near, msa_index_recall(q, k, sel, 1.0, {{1, 5}}), 4.0 / 6.0);
  EXPECT_PRED2(near, msa_block_recall(q, k, sel, 1.0, {{1, 5}}), 0.5);
  // The mean over a set: (4/10 + 7/9 + 4/6) / 3 and (1/2 + 1 + 1/2) / 3, in any order.
  const std::vector<RecallQuery> three = {{1, 5}, {0, 4}, {0, 5}};
  EXPECT_PRED2(near, msa_index_recall(q, k, sel, 1.0, three), (0.4 + 7.0 / 9.0 + 4.0 / 6.0) / 3);
  EXPECT_PRED2(near, msa_block_recall(q, k, sel, 1.0, three), 2.0 / 3.0);
  // The ceiling: the oracle's mass. Row 0 t = 5: {1, 2} keep 8/10; t = 4: {1, 2} keep 7/9 (the
  // selection there is the oracle); row 1 t = 5: {0, 2} keep 4/6.
  EXPECT_PRED2(near, msa_index_recall_ceiling(q, k, sel, 1.0, {{0, 5}}), 0.8);
  EXPECT_PRED2(near, msa_index_recall_ceiling(q, k, sel, 1.0, {{0, 4}}), 7.0 / 9.0);
  EXPECT_PRED2(near, msa_index_recall_ceiling(q, k, sel, 1.0, {{1, 5}}), 4.0 / 6.0);
  EXPECT_PRED2(near, msa_index_recall_ceiling(q, k, sel, 1.0, three),
               (0.8 + 7.0 / 9.0 + 4.0 / 6.0) / 3);
  // The plain-loop reference agrees with the hand values.
  const test::ref::Queries ref_three = {{1, 5}, {0, 4}, {0, 5}};
  EXPECT_PRED2(near, test::ref::index_recall(chosen, test::ref::values(q), kv, z, 1.0, ref_three),
               (0.4 + 7.0 / 9.0 + 4.0 / 6.0) / 3);
  EXPECT_PRED2(near, test::ref::block_recall(chosen, test::ref::values(q), kv, z, 1.0, ref_three),
               2.0 / 3.0);
}

// The max-pool ceiling by hand: the paper's rule (local block plus the top-(k - 1) earlier blocks
// by their largest token score) fed the group's mean attention probabilities as token scores.
// T 6, B 2, k 2, one group of two heads, d 1, scale 1, k_s = log w_s with w = 3 0.5 2 2 1 1 (sum
// 9.5); head 0 has q = 1 (p_s = w_s / 9.5), head 1 q = 0 (p_s = 1/6). At t = 5 the group's mean p
// peaks higher in block 0 ((3 / 9.5 + 1/6) / 2) than in block 1 ((2 / 9.5 + 1/6) / 2), while
// block 1 holds more mass ((4 / 9.5 + 2/6) / 2 against (3.5 / 9.5 + 2/6) / 2): the rule keeps
// blocks {0, 2}, (5.5 / 9.5 + 4/6) / 2, the ceiling {1, 2}, (6 / 9.5 + 4/6) / 2.
TEST(KernelsMsaTest, MaxPoolCeilingByHand) {
  const int64_t T = 6;
  const std::vector<double> w = {3, 0.5, 2, 2, 1, 1};
  std::vector<double> kv(T), qv(2 * T);
  for (int64_t s = 0; s < T; ++s) {
    kv[s] = std::log(w[s]);
    qv[2 * s] = 1.0;      // head 0
    qv[2 * s + 1] = 0.0;  // head 1
  }
  const Tensor q = Tensor::from_vector<double>({1, T, 2, 1}, qv);
  const Tensor k = Tensor::from_vector<double>({1, T, 1, 1}, kv);
  test::ref::Selection chosen(T);
  for (int64_t t = 0; t < T; ++t) chosen[t] = {t / 2};
  test::ref::Sizes z;
  z.batch = 1;
  z.T = T;
  z.H = 2;
  z.G = 1;
  z.block_size = 2;
  z.topk = 2;
  const BlockSelection sel = test::ref::to_block_selection(chosen, z);
  const OracleRecall r = msa_oracle_recall(q, k, sel, 1.0, {{0, 5}});
  auto near = [](double got, double want) { return test::scaled_diff(got, want) < 1e-12; };
  EXPECT_PRED2(near, r.max_pool_recall_ceiling, (5.5 / 9.5 + 4.0 / 6.0) / 2);
  EXPECT_PRED2(near, r.index_recall_ceiling, (6.0 / 9.5 + 4.0 / 6.0) / 2);
  EXPECT_PRED2(near, r.index_recall, (2.0 / 9.5 + 2.0 / 6.0) / 2);  // the local block alone
  // t = 1: only the local block exists; every measure keeps everything.
  const OracleRecall first = msa_oracle_recall(q, k, sel, 1.0, {{0, 1}});
  EXPECT_PRED2(near, first.max_pool_recall_ceiling, 1.0);
  EXPECT_PRED2(near, first.index_recall_ceiling, 1.0);
}

// The index recall ceiling (the mass inside the oracle blocks: c(t) plus the top-(k - 1) earlier
// blocks by group-mean dense attention mass) at k < n_b, on random inputs of several shapes (r =
// 2, 1 and 4 heads per group; T a multiple of the block size and not): no selection keeps more,
// neither on average nor at any single query, and the oracle selection (the plain-loop
// reference's: softmax per head, group-mean block mass, local block + top-(k - 1)) keeps exactly
// that much. The ceiling depends on the selection's block size and k only, not on its blocks.
TEST(KernelsMsaTest, RecallCeilingBoundsIndexRecallAndTheOracleSelectionReachesIt) {
  const Case cases[] = {
      {2, 96, 4, 2, 4, 8, 8, 3}, {1, 70, 4, 4, 3, 6, 8, 4}, {3, 50, 4, 1, 4, 5, 5, 2}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message()
                 << "T=" << c.T << " G=" << c.G << " k=" << c.topk << " n_b=" << blocks(c));
    ASSERT_LT(c.topk, blocks(c));
    const Inputs x = make_inputs(c, 920, DType::kF32);
    const Tensor q = random_tensor(x.q.shape(), 921, DType::kF32, 2.0f);
    const Tensor k = random_tensor(x.k.shape(), 922, DType::kF32, 2.0f);
    const double scale = 0.5;
    const int64_t stride = 3;
    const test::ref::Sizes z = sizes(c);
    const auto qv = test::ref::values(q), kv = test::ref::values(k);
    const double index = msa_index_recall(q, k, x.sel, scale, stride);
    const double ceiling = msa_index_recall_ceiling(q, k, x.sel, scale, stride);
    EXPECT_LE(index, ceiling + 1e-12);
    EXPECT_LT(ceiling, 1.0);
    // Well above: random index weights rarely pick the oracle's blocks.
    EXPECT_GT(ceiling - index, 0.01) << "index " << index << ", ceiling " << ceiling;
    // The one-pass pair is the two functions' values, to the bit.
    const OracleRecall pair = msa_oracle_recall(q, k, x.sel, scale, stride);
    EXPECT_EQ(pair.index_recall_ceiling, ceiling);
    EXPECT_EQ(pair.block_recall, msa_block_recall(q, k, x.sel, scale, stride));
    // The paper's rule fed perfect scores keeps at most the ceiling, and more than random index
    // weights do.
    EXPECT_LE(pair.max_pool_recall_ceiling, ceiling + 1e-12);
    EXPECT_GT(pair.max_pool_recall_ceiling, index);

    const test::ref::Selection oracle_ref = test::ref::attention_oracle(qv, kv, z, scale);
    const BlockSelection oracle = test::ref::to_block_selection(oracle_ref, z);
    EXPECT_EQ(msa_index_recall_ceiling(q, k, oracle, scale, stride), ceiling);
    EXPECT_LT(test::scaled_diff(msa_index_recall(q, k, oracle, scale, stride), ceiling), 1e-12);
    // The plain-loop reference's index recall of its oracle is the ceiling too.
    EXPECT_LT(
        test::scaled_diff(ceiling, test::ref::index_recall(oracle_ref, qv, kv, z, scale,
                                                           test::ref::strided_queries(z, stride))),
        1e-12);

    // Query by query (the bound holds per row, not only on average).
    int64_t below = 0;
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t t = 0; t < c.T; t += 5) {
        const std::vector<RecallQuery> one = {{b, t}};
        const double at_t = msa_index_recall_ceiling(q, k, x.sel, scale, one);
        EXPECT_LE(msa_index_recall(q, k, x.sel, scale, one), at_t + 1e-12)
            << "b " << b << " t " << t;
        EXPECT_LT(test::scaled_diff(msa_index_recall(q, k, oracle, scale, one), at_t), 1e-12)
            << "b " << b << " t " << t;
        below += at_t < 1.0 - 1e-9;
      }
    EXPECT_GT(below, 0);  // some rows cannot keep everything with k blocks
  }
}

// k >= n_b: the oracle holds every block, so the ceiling is 1 (the whole mass), like the recalls.
TEST(KernelsMsaTest, RecallCeilingIsOneWithEveryBlock) {
  for (const Case& c : {Case{1, 40, 4, 2, 4, 8, 8, 5}, Case{2, 33, 4, 1, 3, 4, 4, 9}}) {
    SCOPED_TRACE(testing::Message() << "k=" << c.topk << " n_b=" << blocks(c));
    ASSERT_GE(c.topk, blocks(c));
    const Inputs x = make_inputs(c, 930, DType::kF32);
    const Tensor q = random_tensor(x.q.shape(), 931, DType::kF32, 2.0f);
    const Tensor k = random_tensor(x.k.shape(), 932, DType::kF32, 2.0f);
    EXPECT_NEAR(msa_index_recall_ceiling(q, k, x.sel, 0.5, 3), 1.0, 1e-12);
    EXPECT_NEAR(msa_index_recall_ceiling(q, k, x.sel, 0.5, {{0, c.T - 1}, {0, 7}}), 1.0, 1e-12);
  }
}

// A NaN in the attention makes the ceiling NaN (not a finite number a comparison could accept):
// the bound and the reference comparisons of the tests above fail on it. (Block recall counts
// hits and stays finite.)
TEST(KernelsMsaTest, RecallCeilingIsNaNOnNaNAttention) {
  const Case c{1, 48, 4, 2, 4, 8, 8, 3};
  const Inputs x = make_inputs(c, 940);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor q = x.q.clone();
  q.data<double>()[(0 * c.T + 30) * c.H * c.d] = nan;  // query t = 30, head 0 (group 0)
  const double index = msa_index_recall(q, x.k, x.sel, 0.5, {{0, 30}});
  const double ceiling = msa_index_recall_ceiling(q, x.k, x.sel, 0.5, {{0, 30}});
  EXPECT_TRUE(std::isnan(ceiling)) << ceiling;
  EXPECT_FALSE(index <= ceiling + 1e-12);
  EXPECT_FALSE(test::scaled_diff(
                   ceiling, msa_index_recall_ceiling(x.q, x.k, x.sel, 0.5, {{0, 30}})) < 1e-12);
  // A NaN key reaches every later query's ceiling.
  Tensor k = x.k.clone();
  k.data<double>()[5 * c.G * c.d] = nan;  // key s = 5, group 0
  EXPECT_TRUE(std::isnan(msa_index_recall_ceiling(q, k, x.sel, 0.5, 4)));
  EXPECT_TRUE(std::isnan(msa_index_recall_ceiling(x.q, k, x.sel, 0.5, {{0, 47}})));
  EXPECT_FALSE(std::isnan(msa_index_recall_ceiling(x.q, k, x.sel, 0.5, {{0, 4}})));  // s = 5 > t
}

// A NaN in the teacher's inputs makes the index loss NaN, as it makes the gradients: a finite
// (even 0) loss next to NaN gradients hid it from every caller that checks the loss.
TEST(KernelsMsaTest, IndexLossIsNaNOnNaNTeacher) {
  const Case c{1, 48, 4, 2, 4, 8, 8, 3};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
    SCOPED_TRACE(mode_name(mode));
    const Inputs x = make_inputs(c, 950);
    const Tensor lse = main_branch_lse(mode, x, 0.5);
    Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
           dik = Tensor::empty(x.ik.shape(), DType::kF64);
    EXPECT_TRUE(std::isfinite(
        msa_index_loss(mode, x.q, x.k, lse, x.sel, x.iq, x.ik, 0.5, 1.0, diq, dik).loss));
    Tensor k = x.k.clone();
    k.data<double>()[5 * c.G * c.d] = nan;  // key s = 5, group 0
    EXPECT_TRUE(
        std::isnan(msa_index_loss(mode, x.q, k, lse, x.sel, x.iq, x.ik, 0.5, 1.0, diq, dik).loss));
    Tensor q = x.q.clone();
    q.data<double>()[30 * c.H * c.d] = -std::numeric_limits<double>::infinity();  // t 30, head 0
    EXPECT_FALSE(std::isfinite(
        msa_index_loss(mode, q, x.k, lse, x.sel, x.iq, x.ik, 0.5, 1.0, diq, dik).loss));
  }
}

// An empty key tensor is refused (its kv length 0 once read as "as many keys as queries", so the
// kernels selected, read and wrote past it).
TEST(KernelsMsaTest, EmptyKeysAreRefused) {
  const Case c{1, 5, 4, 2, 4, 8, 8, 3};
  const Inputs x = make_inputs(c, 960);
  const Tensor ik = Tensor::empty({1, 0, c.dI}, DType::kF64);
  const Tensor k = Tensor::empty({1, 0, c.G, c.d}, DType::kF64);
  BlockSelection sel = BlockSelection::allocate(1, c.T, c.G, c.block_size, c.topk, Device::kCPU);
  EXPECT_DEATH(msa_index_topk(x.iq, ik, sel), "more query tokens than the keys");
  Tensor out = Tensor::empty(x.q.shape(), DType::kF64);
  Tensor lse = Tensor::empty({1, c.H, c.T}, DType::kF64);
  EXPECT_DEATH(msa_sparse_attention_forward(x.q, k, k, x.sel, 0.5, out, lse),
               "more query tokens than the keys");
}

// ---- 5. causality ------------------------------------------------------------------------

TEST(KernelsMsaTest, FutureTokensChangeNeitherSelectionNorOutput) {
  const Case c{1, 45, 4, 2, 4, 3, 4, 3};
  const double scale = 0.5;
  Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, 71, DType::kF32);
  Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, 72, DType::kF32);
  Tensor v = random_tensor({c.batch, c.T, c.G, c.d}, 73, DType::kF32);
  Tensor iq = random_tensor({c.batch, c.T, c.G, c.dI}, 74, DType::kF32);
  Tensor ik = random_tensor({c.batch, c.T, c.dI}, 75, DType::kF32);
  auto run = [&](BlockSelection& sel, Tensor& out) {
    sel = BlockSelection::allocate(c.batch, c.T, c.G, c.block_size, c.topk, Device::kCPU);
    msa_index_topk(iq, ik, sel);
    out = Tensor::empty(q.shape(), DType::kF32);
    Tensor lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
    msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
  };
  BlockSelection sel0;
  Tensor out0;
  run(sel0, out0);
  for (int64_t t : {0, 13, 30, 44}) {
    // Replace everything after position t (every input of the layer) by fresh random values.
    for (Tensor* x : {&q, &k, &v, &iq, &ik}) {
      const int64_t row = x->numel() / c.T;
      Tensor noise = random_tensor(x->shape(), 1000 + t, DType::kF32, 3.0f);
      for (int64_t i = (t + 1) * row; i < x->numel(); ++i)
        x->data<float>()[i] = noise.data<float>()[i];
    }
    BlockSelection sel1;
    Tensor out1;
    run(sel1, out1);
    for (int64_t s = 0; s <= t; ++s) {
      for (int64_t g = 0; g < c.G; ++g) {
        const int64_t row = s * c.G + g;
        ASSERT_EQ(sel0.counts.data<int32_t>()[row], sel1.counts.data<int32_t>()[row]);
        for (int i = 0; i < c.topk; ++i)
          ASSERT_EQ(sel0.indices.data<int32_t>()[row * c.topk + i],
                    sel1.indices.data<int32_t>()[row * c.topk + i])
              << "selection of token " << s << " changed when tokens after " << t << " changed";
      }
      for (int64_t i = 0; i < c.H * c.d; ++i)
        ASSERT_EQ(out0.data<float>()[s * c.H * c.d + i], out1.data<float>()[s * c.H * c.d + i])
            << "output of token " << s << " changed when tokens after " << t << " changed";
    }
    sel0 = sel1;
    out0 = out1;
  }
}

// The key-block hit rate on a selection written by hand: batch 2, T 8, 2 groups, B 2, top-2.
// Rows (b, t, g) and their selected blocks:
//   (0, 5, 0): {0, 2}   (0, 5, 1): {1, 2}   key 1 (block 0): hit, miss
//   (1, 7, 0): {3}      (1, 7, 1): {2, 3}   key 4 (block 2): miss, hit
//   (1, 3, 0): {0, 1}   (1, 3, 1): {1}      key 3 (block 1): hit, hit
// -> 4 hits of 6 rows.
TEST(KernelsMsaTest, SelectedKeyFractionByHand) {
  BlockSelection sel = BlockSelection::allocate(2, 8, 2, 2, 2, Device::kCPU);
  sel.indices.fill_(-1);
  sel.counts.fill_(1);
  int32_t* idx = sel.indices.data<int32_t>();
  int32_t* cnt = sel.counts.data<int32_t>();
  auto set = [&](int64_t b, int64_t t, int64_t g, std::vector<int32_t> blocks) {
    const int64_t row = (b * 8 + t) * 2 + g;
    cnt[row] = static_cast<int32_t>(blocks.size());
    for (size_t e = 0; e < blocks.size(); ++e) idx[row * 2 + e] = blocks[e];
  };
  set(0, 5, 0, {0, 2});
  set(0, 5, 1, {1, 2});
  set(1, 7, 0, {3});
  set(1, 7, 1, {2, 3});
  set(1, 3, 0, {0, 1});
  set(1, 3, 1, {1});
  const std::vector<RecallQuery> queries = {{0, 5}, {1, 7}, {1, 3}};
  EXPECT_DOUBLE_EQ(msa_selected_key_fraction(sel, queries, {1, 4, 3}), 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(msa_selected_key_fraction(sel, {{1, 3}}, {3}), 1.0);
  EXPECT_DOUBLE_EQ(msa_selected_key_fraction(sel, {{0, 5}}, {5}), 1.0);  // block 2: both
  EXPECT_DOUBLE_EQ(msa_selected_key_fraction(sel, {{0, 5}}, {0}), 0.5);  // block 0: group 0
  EXPECT_DEATH(msa_selected_key_fraction(sel, queries, {1, 4}), "key positions");
  EXPECT_DEATH(msa_selected_key_fraction(sel, {{0, 5}}, {6}), "after it");
}

}  // namespace
}  // namespace msa
