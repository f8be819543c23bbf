#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;

constexpr double kEps = 1e-5;

TEST(KernelsRmsNormTest, ForwardMatchesDefinition) {
  const int64_t N = 5, D = 12;
  Tensor x = random_tensor({N, D}, 1), w = random_tensor({D}, 2);
  Tensor y = Tensor::empty({N, D}, DType::kF64), rstd = Tensor::empty({N}, DType::kF64);
  rmsnorm_forward(x, w, kEps, y, rstd);
  const std::vector<double> xv = x.to_double_vector(), wv = w.to_double_vector();
  const std::vector<double> yv = y.to_double_vector(), rv = rstd.to_double_vector();
  for (int64_t n = 0; n < N; ++n) {
    double mean_sq = 0;
    for (int64_t i = 0; i < D; ++i) mean_sq += xv[n * D + i] * xv[n * D + i] / D;
    const double rms = std::sqrt(mean_sq + kEps);
    EXPECT_NEAR(rv[n], 1 / rms, 1e-14);
    for (int64_t i = 0; i < D; ++i) EXPECT_NEAR(yv[n * D + i], xv[n * D + i] / rms * wv[i], 1e-13);
  }
}

TEST(KernelsRmsNormTest, BackwardMatchesFiniteDifferences) {
  const int64_t N = 4, D = 9;
  // Small x so that eps matters and its effect on the gradient is exercised.
  Tensor x = random_tensor({N, D}, 11, DType::kF64, 0.01f), w = random_tensor({D}, 12);
  Tensor r = random_tensor({N, D}, 13);
  Tensor y = Tensor::empty({N, D}, DType::kF64), rstd = Tensor::empty({N}, DType::kF64);
  auto loss = [&] {
    rmsnorm_forward(x, w, kEps, y, rstd);
    return test::weighted_sum(y, r);
  };
  loss();
  Tensor dx = random_tensor({N, D}, 14);                  // overwritten
  Tensor dw0 = random_tensor({D}, 15), dw = dw0.clone();  // accumulates
  rmsnorm_backward(r, x, w, rstd, dx, dw);
  auto rx = gradcheck(x, dx, loss, 1e-7);
  EXPECT_LT(rx.max_rel_error, 1e-6) << "dx: " << rx;
  auto rw = gradcheck(w, test::difference(dw, dw0), loss);
  EXPECT_LT(rw.max_rel_error, 1e-6) << "dw: " << rw;
}

TEST(KernelsRmsNormTest, BackwardWithoutDwGivesSameDx) {
  const int64_t N = 3, D = 8;
  Tensor x = random_tensor({N, D}, 21), w = random_tensor({D}, 22), dy = random_tensor({N, D}, 23);
  Tensor y = Tensor::empty({N, D}, DType::kF64), rstd = Tensor::empty({N}, DType::kF64);
  rmsnorm_forward(x, w, kEps, y, rstd);
  Tensor dx1 = Tensor::empty({N, D}, DType::kF64), dx2 = Tensor::empty({N, D}, DType::kF64);
  Tensor dw = Tensor::zeros({D}, DType::kF64), none;
  rmsnorm_backward(dy, x, w, rstd, dx1, dw);
  rmsnorm_backward(dy, x, w, rstd, dx2, none);
  EXPECT_TRUE(test::bitwise_equal(dx1, dx2));
}

// The residual rides along in the same pass: bit for bit a separate add afterwards, also when dx
// is the residual's own buffer (how the transformer calls it), and dw is unchanged by it.
TEST(KernelsRmsNormTest, ResidualEqualsSeparateAdd) {
  const int64_t N = 5, D = 24;
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor x = random_tensor({N, D}, 41, dt), w = random_tensor({D}, 42, dt);
    Tensor dy = random_tensor({N, D}, 43, dt), res = random_tensor({N, D}, 44, dt);
    Tensor y = Tensor::empty({N, D}, dt), rstd = Tensor::empty({N}, dt);
    rmsnorm_forward(x, w, kEps, y, rstd);
    Tensor want = Tensor::empty({N, D}, dt), dw_want = random_tensor({D}, 45, dt);
    Tensor dw_fused = dw_want.clone(), dw_alias = dw_want.clone();
    rmsnorm_backward(dy, x, w, rstd, want, dw_want);
    add(want, res, want);
    Tensor fused = Tensor::empty({N, D}, dt);
    rmsnorm_backward(dy, x, w, rstd, fused, dw_fused, res);
    EXPECT_TRUE(test::bitwise_equal(fused, want));
    EXPECT_TRUE(test::bitwise_equal(dw_fused, dw_want));
    Tensor alias = res.clone();
    rmsnorm_backward(dy, x, w, rstd, alias, dw_alias, alias);
    EXPECT_TRUE(test::bitwise_equal(alias, want));
    EXPECT_TRUE(test::bitwise_equal(dw_alias, dw_want));
    // The residual is really added (a fused result equal to the plain one would pass the above
    // only if res were zero).
    Tensor plain = Tensor::empty({N, D}, dt), none;
    rmsnorm_backward(dy, x, w, rstd, plain, none);
    EXPECT_GT(test::max_scaled_diff(fused, plain), 0.1);
  }
}

TEST(KernelsRmsNormTest, F32MatchesF64) {
  const int64_t N = 6, D = 64;
  Tensor x = random_tensor({N, D}, 31), w = random_tensor({D}, 32), dy = random_tensor({N, D}, 33);
  auto run = [&](DType dt) {
    Tensor y = Tensor::empty({N, D}, dt), rstd = Tensor::empty({N}, dt);
    Tensor dx = Tensor::empty({N, D}, dt), dw = Tensor::zeros({D}, dt);
    rmsnorm_forward(x.to(dt), w.to(dt), kEps, y, rstd);
    rmsnorm_backward(dy.to(dt), x.to(dt), w.to(dt), rstd, dx, dw);
    return std::vector<Tensor>{y, rstd, dx, dw};
  };
  std::vector<Tensor> f32 = run(DType::kF32), f64 = run(DType::kF64);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_LT(test::max_scaled_diff(f32[i], f64[i]), 1e-5);
}

}  // namespace
}  // namespace msa
