#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/rope.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;

TEST(KernelsRopeTest, ForwardMatchesRotateHalfFormula) {
  const int64_t B = 2, T = 6, H = 3, d = 8;
  for (double theta : {10000.0, 1e6, 3.5}) {
    Tensor x = random_tensor({B, T, H, d}, 1), y = Tensor::empty({B, T, H, d}, DType::kF64);
    rope_forward(x, theta, y);
    const std::vector<double> xv = x.to_double_vector(), yv = y.to_double_vector();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t p = 0; p < T; ++p) {
        for (int64_t h = 0; h < H; ++h) {
          const int64_t base = ((b * T + p) * H + h) * d;
          for (int64_t i = 0; i < d / 2; ++i) {
            const double angle = p * std::pow(theta, -2.0 * i / d);
            const double x1 = xv[base + i], x2 = xv[base + i + d / 2];
            EXPECT_NEAR(yv[base + i], x1 * std::cos(angle) - x2 * std::sin(angle), 1e-14);
            EXPECT_NEAR(yv[base + i + d / 2], x2 * std::cos(angle) + x1 * std::sin(angle), 1e-14);
          }
        }
      }
    }
  }
}

TEST(KernelsRopeTest, DotProductsDependOnlyOnRelativePosition) {
  // The same vector u at every position: <R(p) u, R(p') u> = <u, R(p' - p) u>.
  const int64_t T = 12, d = 16;
  Tensor u = random_tensor({d}, 2);
  std::vector<double> xv;
  for (int64_t p = 0; p < T; ++p) {
    for (double value : u.to_double_vector()) xv.push_back(value);
  }
  Tensor x = Tensor::from_vector<double>({1, T, 1, d}, xv), y = x.clone();
  rope_forward(x, 500.0, y);
  const std::vector<double> yv = y.to_double_vector();
  auto dot = [&](int64_t p1, int64_t p2) {
    double s = 0;
    for (int64_t i = 0; i < d; ++i) s += yv[p1 * d + i] * yv[p2 * d + i];
    return s;
  };
  EXPECT_NEAR(dot(1, 4), dot(7, 10), 1e-12);
  EXPECT_NEAR(dot(3, 3), dot(0, 0), 1e-12);          // rotations preserve the norm
  EXPECT_GT(std::abs(dot(1, 4) - dot(1, 5)), 1e-6);  // and the test is not vacuous
}

TEST(KernelsRopeTest, BackwardMatchesFiniteDifferences) {
  const int64_t B = 2, T = 9, H = 2, d = 10;
  const double theta = 1e6;
  Tensor x = random_tensor({B, T, H, d}, 11), r = random_tensor({B, T, H, d}, 12);
  Tensor y = Tensor::empty({B, T, H, d}, DType::kF64);
  auto loss = [&] {
    rope_forward(x, theta, y);
    return test::weighted_sum(y, r);
  };
  Tensor dx = Tensor::empty({B, T, H, d}, DType::kF64);
  rope_backward(r, theta, dx);
  auto result = gradcheck(x, dx, loss);
  EXPECT_LT(result.max_rel_error, 1e-6) << result;
}

TEST(KernelsRopeTest, InPlaceMatchesOutOfPlace) {
  const int64_t B = 1, T = 7, H = 4, d = 6;
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor x = random_tensor({B, T, H, d}, 21, dt), y = Tensor::empty({B, T, H, d}, dt);
    rope_forward(x, 10000.0, y);
    Tensor inplace = x.clone();
    rope_forward(inplace, 10000.0, inplace);
    EXPECT_TRUE(test::bitwise_equal(inplace, y));
    Tensor dx = Tensor::empty({B, T, H, d}, dt);
    rope_backward(y, 10000.0, dx);
    rope_backward(inplace, 10000.0, inplace);
    EXPECT_TRUE(test::bitwise_equal(inplace, dx));
    EXPECT_LT(test::max_scaled_diff(dx, x), dt == DType::kF32 ? 1e-6 : 1e-14);  // R^T R = I
  }
}

TEST(KernelsRopeTest, F32MatchesF64AtLongPositions) {
  const int64_t T = 3000, d = 8;
  Tensor x = random_tensor({1, T, 1, d}, 31);
  Tensor y64 = Tensor::empty({1, T, 1, d}, DType::kF64);
  Tensor y32 = Tensor::empty({1, T, 1, d}, DType::kF32);
  rope_forward(x, 10000.0, y64);
  rope_forward(x.to(DType::kF32), 10000.0, y32);
  EXPECT_LT(test::max_scaled_diff(y32, y64), 1e-6);
}

}  // namespace
}  // namespace msa
