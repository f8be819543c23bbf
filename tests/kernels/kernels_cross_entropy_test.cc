#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cross_entropy.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;

constexpr int kIgnore = -100;

TEST(KernelsCrossEntropyTest, ForwardMatchesNaiveLogSoftmax) {
  const int64_t N = 6, V = 11;
  Tensor logits = random_tensor({N, V}, 1, DType::kF64, 2.0f);
  const std::vector<int32_t> targets = {3, kIgnore, 0, 10, kIgnore, 7};
  Tensor lse = Tensor::empty({N}, DType::kF64);
  CrossEntropyResult result =
      cross_entropy_forward(logits, Tensor::from_vector<int32_t>({N}, targets), kIgnore, lse);
  // Naive: log(sum(exp)) without the max shift (safe for these small logits).
  const std::vector<double> l = logits.to_double_vector(), lse_v = lse.to_double_vector();
  double total = 0;
  int counted = 0;
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(l[n * V + v]);
    EXPECT_NEAR(lse_v[n], std::log(sum), 1e-13);
    if (targets[n] == kIgnore) continue;
    total += -std::log(std::exp(l[n * V + targets[n]]) / sum);
    ++counted;
  }
  EXPECT_EQ(result.n_counted, counted);
  EXPECT_NEAR(result.loss, total / counted, 1e-13);
}

TEST(KernelsCrossEntropyTest, HugeLogitsDoNotOverflow) {
  // Softmax is shift invariant: logits + 1000 give the loss of logits, in f32 too.
  const int64_t N = 3, V = 50;
  Tensor logits = random_tensor({N, V}, 2, DType::kF32);
  std::vector<double> shifted = logits.to_double_vector();
  for (double& x : shifted) x += 1000.0;
  Tensor targets = Tensor::from_vector<int32_t>({N}, {1, 49, 0});
  Tensor lse = Tensor::empty({N}, DType::kF32);
  const double base = cross_entropy_forward(logits, targets, kIgnore, lse).loss;
  Tensor big = Tensor::from_vector<double>({N, V}, shifted).to(DType::kF32);
  const double loss = cross_entropy_forward(big, targets, kIgnore, lse).loss;
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(loss, base, 1e-4);
}

TEST(KernelsCrossEntropyTest, BackwardWithIgnoredRowsMatchesFiniteDifferences) {
  const int64_t N = 7, V = 9;
  const double dloss = 0.73;
  Tensor logits = random_tensor({N, V}, 11, DType::kF64, 2.0f);
  Tensor targets = Tensor::from_vector<int32_t>({N}, {2, kIgnore, 8, 0, kIgnore, 2, 5});
  Tensor lse = Tensor::empty({N}, DType::kF64);
  auto loss = [&] { return dloss * cross_entropy_forward(logits, targets, kIgnore, lse).loss; };
  const CrossEntropyResult result = cross_entropy_forward(logits, targets, kIgnore, lse);
  EXPECT_EQ(result.n_counted, 5);
  Tensor dlogits = random_tensor({N, V}, 12);  // overwritten
  cross_entropy_backward(logits, targets, lse, kIgnore, result.n_counted, dloss, dlogits);
  auto check = gradcheck(logits, dlogits, loss);
  EXPECT_LT(check.max_rel_error, 1e-6) << check;
  // Ignored rows get exactly zero.
  const std::vector<double> d = dlogits.to_double_vector();
  for (int64_t v = 0; v < V; ++v) {
    EXPECT_EQ(d[1 * V + v], 0.0);
    EXPECT_EQ(d[4 * V + v], 0.0);
  }
}

TEST(KernelsCrossEntropyTest, BackwardInPlaceMatchesOutOfPlace) {
  const int64_t N = 4, V = 13;
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor logits = random_tensor({N, V}, 21, dt);
    Tensor targets = Tensor::from_vector<int32_t>({N}, {12, 0, kIgnore, 4});
    Tensor lse = Tensor::empty({N}, dt), dlogits = Tensor::empty({N, V}, dt);
    const CrossEntropyResult r = cross_entropy_forward(logits, targets, kIgnore, lse);
    cross_entropy_backward(logits, targets, lse, kIgnore, r.n_counted, 1.5, dlogits);
    Tensor inplace = logits.clone();
    cross_entropy_backward(inplace, targets, lse, kIgnore, r.n_counted, 1.5, inplace);
    EXPECT_TRUE(test::bitwise_equal(inplace, dlogits));
  }
}

TEST(KernelsCrossEntropyTest, AllIgnoredGivesZeroLossAndGradient) {
  const int64_t N = 3, V = 5;
  Tensor logits = random_tensor({N, V}, 31);
  Tensor targets = Tensor::from_vector<int32_t>({N}, {kIgnore, kIgnore, kIgnore});
  Tensor lse = Tensor::empty({N}, DType::kF64), dlogits = random_tensor({N, V}, 32);
  const CrossEntropyResult r = cross_entropy_forward(logits, targets, kIgnore, lse);
  EXPECT_EQ(r.n_counted, 0);
  EXPECT_EQ(r.loss, 0.0);
  cross_entropy_backward(logits, targets, lse, kIgnore, r.n_counted, 1.0, dlogits);
  for (double x : dlogits.to_double_vector()) EXPECT_EQ(x, 0.0);
}

TEST(KernelsCrossEntropyTest, F32MatchesF64) {
  const int64_t N = 8, V = 1000;
  Tensor logits = random_tensor({N, V}, 41, DType::kF64, 3.0f);
  Tensor targets = Tensor::from_vector<int32_t>({N}, {0, 999, 500, kIgnore, 1, 2, 3, 998});
  auto run = [&](DType dt, double* loss) {
    Tensor lse = Tensor::empty({N}, dt), dlogits = Tensor::empty({N, V}, dt);
    const CrossEntropyResult r = cross_entropy_forward(logits.to(dt), targets, kIgnore, lse);
    cross_entropy_backward(logits.to(dt), targets, lse, kIgnore, r.n_counted, 1.0, dlogits);
    *loss = r.loss;
    return std::vector<Tensor>{lse, dlogits};
  };
  double loss32 = 0, loss64 = 0;
  std::vector<Tensor> f32 = run(DType::kF32, &loss32), f64 = run(DType::kF64, &loss64);
  EXPECT_NEAR(loss32, loss64, 1e-5 * loss64);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_LT(test::max_scaled_diff(f32[i], f64[i]), 1e-6);
}

}  // namespace
}  // namespace msa
