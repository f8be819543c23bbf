// CPU reference MSA kernels (kernels/msa.h): the k >= n_b identity with dense
// attention, exp-free top-k against a brute-force sort, finite-difference
// checks of every backward, causality.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/msa.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;
using test::weighted_sum;

struct Case {
  int64_t batch, T, H, G, d, dI;
  int block_size, topk;
};

int64_t blocks(const Case& c) { return msa_num_blocks(c.T, c.block_size); }

// Index tensors and selection from random iq, ik.
struct Index {
  Tensor iq, ik, kbar;
  BlockSelection sel;
};

Index make_index(const Case& c, uint64_t seed, DType dtype) {
  Index x;
  x.iq = random_tensor({c.batch, c.T, c.G, c.dI}, seed, dtype);
  x.ik = random_tensor({c.batch, c.T, c.G, c.dI}, seed + 1, dtype);
  x.kbar = Tensor::empty({c.batch, blocks(c), c.G, c.dI}, dtype);
  msa_block_pool_forward(x.ik, c.block_size, x.kbar);
  x.sel = BlockSelection::allocate(c.batch, c.T, c.G, c.block_size, c.topk, Device::kCPU);
  msa_index_topk(x.iq, x.kbar, x.sel);
  return x;
}

// ---- 1. identity: every block selected == dense attention
// ----------------------------------

TEST(KernelsMsaTest, AllBlocksSelectedEqualsDenseAttention) {
  // T not a multiple of B; G:H ratios 1:1, 1:2, 1:3, 1:4 (MQA).
  const std::vector<Case> cases = {{2, 37, 4, 2, 8, 4, 8, 5},
                                   {1, 29, 6, 2, 4, 3, 4, 8},
                                   {2, 19, 3, 3, 6, 4, 5, 7},
                                   {1, 23, 4, 1, 8, 2, 6, 4}};
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " H=" << c.H << " G=" << c.G);
    ASSERT_GE(c.topk, blocks(c));
    Index x = make_index(c, seed, DType::kF32);
    Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, seed + 2, DType::kF32);
    Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, seed + 3, DType::kF32);
    Tensor v = random_tensor({c.batch, c.T, c.G, c.d}, seed + 4, DType::kF32);
    Tensor dout = random_tensor(q.shape(), seed + 5, DType::kF32);
    seed += 10;
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    Tensor out_s = Tensor::empty(q.shape(), DType::kF32),
           lse_s = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
    Tensor out_d = Tensor::empty(q.shape(), DType::kF32),
           lse_d = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
    msa_sparse_attention_forward(q, k, v, x.sel, scale, out_s, lse_s);
    attention_forward(q, k, v, scale, out_d, lse_d);
    Tensor dq_s = Tensor::empty(q.shape(), DType::kF32),
           dk_s = Tensor::empty(k.shape(), DType::kF32),
           dv_s = Tensor::empty(v.shape(), DType::kF32);
    Tensor dq_d = Tensor::empty(q.shape(), DType::kF32),
           dk_d = Tensor::empty(k.shape(), DType::kF32),
           dv_d = Tensor::empty(v.shape(), DType::kF32);
    msa_sparse_attention_backward(dout, q, k, v, out_s, lse_s, x.sel, scale, dq_s, dk_s, dv_s);
    attention_backward(dout, q, k, v, out_d, lse_d, scale, dq_d, dk_d, dv_d);
    auto max_abs_diff = [](const Tensor& a, const Tensor& b) {
      const auto x = a.to_double_vector(), y = b.to_double_vector();
      double m = 0;
      for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
      return m;
    };
    EXPECT_LT(max_abs_diff(out_s, out_d), 1e-5);
    EXPECT_LT(max_abs_diff(lse_s, lse_d), 1e-5);
    EXPECT_LT(max_abs_diff(dq_s, dq_d), 1e-5);
    EXPECT_LT(max_abs_diff(dk_s, dk_d), 1e-5);
    EXPECT_LT(max_abs_diff(dv_s, dv_d), 1e-5);
  }
}

// ---- 2. top-k against a brute-force sort
// ---------------------------------------------------

// Small integers make many exact ties among the dot products.
Tensor integer_tensor(const Shape& shape, uint64_t seed, int levels) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = static_cast<float>(static_cast<int>(philox4x32(seed, i).v[0] % levels) - levels / 2);
  return t;
}

void expect_topk_matches_brute_force(const Case& c, uint64_t seed, int levels) {
  SCOPED_TRACE(testing::Message() << "T=" << c.T << " B=" << c.block_size << " k=" << c.topk
                                  << " levels=" << levels);
  const int64_t nb = blocks(c);
  Tensor iq = integer_tensor({c.batch, c.T, c.G, c.dI}, seed, levels);
  Tensor kbar = integer_tensor({c.batch, nb, c.G, c.dI}, seed + 1, levels);
  BlockSelection sel =
      BlockSelection::allocate(c.batch, c.T, c.G, c.block_size, c.topk, Device::kCPU);
  msa_index_topk(iq, kbar, sel);
  const float* q = iq.data<float>();
  const float* kb = kbar.data<float>();
  int ties_seen = 0;
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t t = 0; t < c.T; ++t) {
      for (int64_t g = 0; g < c.G; ++g) {
        const int64_t row = (b * c.T + t) * c.G + g;
        const int64_t cb = t / c.block_size;
        std::vector<std::pair<double, int64_t>> ranked;  // (-score, j): ascending = best first
        for (int64_t j = 0; j < cb; ++j) {
          double s = 0;
          for (int64_t i = 0; i < c.dI; ++i)
            s += double(q[row * c.dI + i]) * double(kb[((b * nb + j) * c.G + g) * c.dI + i]);
          ranked.push_back({-s, j});
        }
        std::sort(ranked.begin(), ranked.end());
        for (size_t i = 1; i < ranked.size(); ++i)
          ties_seen += ranked[i].first == ranked[i - 1].first;
        std::vector<int32_t> expected;
        for (int64_t i = 0; i < std::min<int64_t>(c.topk - 1, cb); ++i)
          expected.push_back(static_cast<int32_t>(ranked[i].second));
        expected.push_back(static_cast<int32_t>(cb));
        std::sort(expected.begin(), expected.end());
        ASSERT_EQ(sel.counts.data<int32_t>()[row], static_cast<int32_t>(expected.size()))
            << "row b=" << b << " t=" << t << " g=" << g;
        for (int64_t i = 0; i < c.topk; ++i) {
          const int32_t want = i < static_cast<int64_t>(expected.size()) ? expected[i] : -1;
          ASSERT_EQ(sel.indices.data<int32_t>()[row * c.topk + i], want)
              << "row b=" << b << " t=" << t << " g=" << g << " slot " << i;
        }
      }
    }
  }
  if (levels <= 3 && c.T > 2 * c.block_size) {
    EXPECT_GT(ties_seen, 0) << "the case had no ties";
  }
}

TEST(KernelsMsaTest, TopkMatchesBruteForceSortWithTies) {
  expect_topk_matches_brute_force({2, 70, 4, 2, 4, 3, 4, 5}, 1,
                                  3);  // many ties, T % B != 0
  expect_topk_matches_brute_force({1, 64, 4, 2, 4, 2, 8, 3}, 2,
                                  3);                                 // T an exact multiple of B
  expect_topk_matches_brute_force({2, 50, 4, 2, 4, 4, 3, 6}, 3, 41);  // few ties
}

TEST(KernelsMsaTest, TopkShortSequencesAndRowsWithFewEligibleBlocks) {
  expect_topk_matches_brute_force({2, 5, 4, 2, 4, 3, 8, 4}, 4,
                                  3);                               // T < B: local block only
  expect_topk_matches_brute_force({1, 8, 4, 2, 4, 3, 8, 4}, 5, 3);  // T = B
  expect_topk_matches_brute_force({1, 30, 4, 1, 4, 3, 4, 16}, 6,
                                  5);  // k > n_b everywhere
  expect_topk_matches_brute_force({1, 30, 4, 1, 4, 3, 4, 1}, 7,
                                  5);  // k = 1: local block only
}

// ---- 3. finite differences (float64)
// -------------------------------------------------------

TEST(KernelsMsaTest, BlockPoolBackwardMatchesFiniteDifferences) {
  const Case c{2, 11, 4, 2, 4, 3, 4, 3};
  Tensor ik = random_tensor({c.batch, c.T, c.G, c.dI}, 21);
  Tensor w = random_tensor({c.batch, blocks(c), c.G, c.dI}, 22);
  Tensor kbar = Tensor::empty(w.shape(), DType::kF64);
  auto loss = [&]() {
    msa_block_pool_forward(ik, c.block_size, kbar);
    return weighted_sum(kbar, w);
  };
  Tensor dik = Tensor::empty(ik.shape(), DType::kF64);
  msa_block_pool_backward(w, c.block_size, dik);
  auto r = gradcheck(ik, dik, loss);
  EXPECT_LT(r.max_rel_error, 1e-6) << r;
}

TEST(KernelsMsaTest, SparseAttentionBackwardMatchesFiniteDifferences) {
  for (const Case& c : {Case{2, 19, 4, 2, 4, 3, 4, 3}, Case{1, 17, 6, 2, 3, 2, 3, 2}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " H=" << c.H << " G=" << c.G);
    Index x = make_index(c, 31, DType::kF64);  // the selection is held fixed
    Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, 32);
    Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, 33);
    Tensor v = random_tensor({c.batch, c.T, c.G, c.d}, 34);
    Tensor w = random_tensor(q.shape(), 35);
    const double scale = 0.7;
    Tensor out = Tensor::empty(q.shape(), DType::kF64),
           lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF64);
    auto loss = [&]() {
      msa_sparse_attention_forward(q, k, v, x.sel, scale, out, lse);
      return weighted_sum(out, w);
    };
    loss();
    Tensor dq = Tensor::empty(q.shape(), DType::kF64), dk = Tensor::empty(k.shape(), DType::kF64),
           dv = Tensor::empty(v.shape(), DType::kF64);
    msa_sparse_attention_backward(w, q, k, v, out, lse, x.sel, scale, dq, dk, dv);
    auto rq = gradcheck(q, dq, loss);
    auto rk = gradcheck(k, dk, loss);
    auto rv = gradcheck(v, dv, loss);
    EXPECT_LT(rq.max_rel_error, 1e-6) << "dq: " << rq;
    EXPECT_LT(rk.max_rel_error, 1e-6) << "dk: " << rk;
    EXPECT_LT(rv.max_rel_error, 1e-6) << "dv: " << rv;
  }
}

void check_index_loss_gradients(IndexLossMode mode) {
  const Case c{2, 21, 4, 2, 4, 3, 3, 4};  // 7 blocks, 3 non-local selected
  Index x = make_index(c, 41, DType::kF64);
  Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, 42);
  Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, 43);
  Tensor v = random_tensor({c.batch, c.T, c.G, c.d}, 44);
  const double scale = 0.5, weight = 0.7;
  Tensor out = Tensor::empty(q.shape(), DType::kF64),
         lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF64);
  if (mode == IndexLossMode::kSparse) {
    msa_sparse_attention_forward(q, k, v, x.sel, scale, out, lse);
  } else {
    attention_forward(q, k, v, scale, out, lse);
  }
  Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
         dkbar = Tensor::empty(x.kbar.shape(), DType::kF64);
  Tensor scratch_q = diq.clone(), scratch_k = dkbar.clone();
  auto loss = [&]() {
    return weight * msa_index_loss(mode, q, k, lse, x.sel, x.iq, x.kbar, scale, c.block_size, 1.0,
                                   scratch_q, scratch_k)
                        .loss;
  };
  IndexLossResult r =
      msa_index_loss(mode, q, k, lse, x.sel, x.iq, x.kbar, scale, c.block_size, weight, diq, dkbar);
  ASSERT_GT(r.n_rows, 0);
  ASSERT_GT(r.loss, 0.0);
  auto rq = gradcheck(x.iq, diq, loss);
  auto rk = gradcheck(x.kbar, dkbar, loss);
  EXPECT_LT(rq.max_rel_error, 1e-6) << "diq: " << rq;
  EXPECT_LT(rk.max_rel_error, 1e-6) << "dkbar: " << rk;
  EXPECT_GT(rq.max_abs_grad, 1e-6);
  EXPECT_GT(rk.max_abs_grad, 1e-6);
}

TEST(KernelsMsaTest, SparseIndexLossGradientMatchesFiniteDifferences) {
  check_index_loss_gradients(IndexLossMode::kSparse);
}

TEST(KernelsMsaTest, DenseTargetIndexLossGradientMatchesFiniteDifferences) {
  check_index_loss_gradients(IndexLossMode::kDenseTarget);
}

TEST(KernelsMsaTest, DenseTargetIndexLossEqualsExplicitKl) {
  // The loss against an explicit KL(P || Q) written out for a 3-block sequence.
  const Case c{1, 12, 2, 1, 4, 2, 4, 3};
  Index x = make_index(c, 51, DType::kF64);
  Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, 52);
  Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, 53);
  Tensor v = random_tensor({c.batch, c.T, c.G, c.d}, 54);
  Tensor out = Tensor::empty(q.shape(), DType::kF64),
         lse = Tensor::empty({1, c.H, c.T}, DType::kF64);
  attention_forward(q, k, v, 1.0, out, lse);
  Tensor diq = Tensor::empty(x.iq.shape(), DType::kF64),
         dkbar = Tensor::empty(x.kbar.shape(), DType::kF64);
  IndexLossResult r = msa_index_loss(IndexLossMode::kDenseTarget, q, k, lse, BlockSelection{}, x.iq,
                                     x.kbar, 1.0, c.block_size, 1.0, diq, dkbar);
  // Rows with c(t) >= 2: t in [8, 12) (block 2), 4 rows.
  ASSERT_EQ(r.n_rows, 4);
  // Explicit: P over blocks {0, 1} from dense attention, Q = softmax of index
  // scores.
  const auto qv = q.to_double_vector(), kv = k.to_double_vector(), lv = lse.to_double_vector();
  const auto iqv = x.iq.to_double_vector(), kbv = x.kbar.to_double_vector();
  double kl_sum = 0;
  for (int64_t t = 8; t < 12; ++t) {
    double P[2] = {0, 0};
    for (int64_t h = 0; h < c.H; ++h) {
      double m[2] = {0, 0};
      for (int64_t s = 0; s < 8; ++s) {
        double z = 0;
        for (int64_t i = 0; i < c.d; ++i) z += qv[(t * c.H + h) * c.d + i] * kv[s * c.d + i];
        m[s / 4] += std::exp(z - lv[h * c.T + t]);
      }
      for (int j = 0; j < 2; ++j) P[j] += m[j] / (m[0] + m[1]) / c.H;
    }
    double sc[2];
    for (int j = 0; j < 2; ++j) {
      sc[j] = 0;
      for (int64_t i = 0; i < c.dI; ++i) sc[j] += iqv[t * c.dI + i] * kbv[j * c.dI + i];
      sc[j] /= std::sqrt(static_cast<double>(c.dI));
    }
    const double lz = std::log(std::exp(sc[0]) + std::exp(sc[1]));
    for (int j = 0; j < 2; ++j) kl_sum += P[j] * (std::log(P[j]) - (sc[j] - lz));
  }
  EXPECT_NEAR(r.loss, kl_sum / 4, 1e-12);
  EXPECT_GT(r.loss, 0.0);
}

// ---- recall
// --------------------------------------------------------------------------------

TEST(KernelsMsaTest, RecallIsOneWithEveryBlockAndBelowOneWhenSparse) {
  const Case full{1, 40, 4, 2, 4, 3, 8, 5}, sparse{1, 40, 4, 2, 4, 3, 4, 2};
  for (const Case& c : {full, sparse}) {
    Index x = make_index(c, 61, DType::kF32);
    Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, 62, DType::kF32, 2.0f);
    Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, 63, DType::kF32, 2.0f);
    const double recall = msa_index_recall(q, k, x.sel, 0.5, 3);
    if (c.topk >= blocks(c)) {
      EXPECT_NEAR(recall, 1.0, 1e-12);
    } else {
      EXPECT_GT(recall, 0.0);
      EXPECT_LT(recall, 1.0);
    }
  }
}

// ---- 4. causality
// --------------------------------------------------------------------------

TEST(KernelsMsaTest, FutureTokensChangeNeitherSelectionNorOutput) {
  const Case c{1, 45, 4, 2, 4, 3, 4, 3};
  const double scale = 0.5;
  Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, 71, DType::kF32);
  Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, 72, DType::kF32);
  Tensor v = random_tensor({c.batch, c.T, c.G, c.d}, 73, DType::kF32);
  Tensor iq = random_tensor({c.batch, c.T, c.G, c.dI}, 74, DType::kF32);
  Tensor ik = random_tensor({c.batch, c.T, c.G, c.dI}, 75, DType::kF32);
  auto run = [&](BlockSelection& sel, Tensor& out) {
    Tensor kbar = Tensor::empty({c.batch, blocks(c), c.G, c.dI}, DType::kF32);
    msa_block_pool_forward(ik, c.block_size, kbar);
    sel = BlockSelection::allocate(c.batch, c.T, c.G, c.block_size, c.topk, Device::kCPU);
    msa_index_topk(iq, kbar, sel);
    out = Tensor::empty(q.shape(), DType::kF32);
    Tensor lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
    msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
  };
  BlockSelection sel0;
  Tensor out0;
  run(sel0, out0);
  for (int64_t t : {0, 13, 30, 44}) {
    // Replace everything after position t (every input of the layer) by fresh
    // random values.
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

}  // namespace
}  // namespace msa
