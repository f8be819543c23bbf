// The comparison helpers of tests/testing/gradcheck.h fail on NaN and infinity: a kernel that
// writes NaN must never pass a tolerance check.
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::max_scaled_diff;

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

TEST(TestingHelpersTest, MaxScaledDiffFailsWhenEitherTensorIsNotFinite) {
  const Tensor finite = Tensor::from_vector<double>({2, 3}, {1, -2, 3, 0.5, 0, 4});
  const Tensor nan = Tensor::from_vector<double>({2, 3}, std::vector<double>(6, kNaN));
  Tensor one_inf = finite.clone();
  one_inf.data<double>()[4] = kInf;
  Tensor one_nan = finite.clone();
  one_nan.data<double>()[5] = kNaN;
  EXPECT_FALSE(max_scaled_diff(nan, finite) < 1e3);  // all-NaN result vs a finite reference
  EXPECT_FALSE(max_scaled_diff(finite, nan) < 1e3);  // NaN in the reference
  EXPECT_FALSE(max_scaled_diff(one_nan, finite) < 1e3);
  EXPECT_FALSE(max_scaled_diff(one_inf, finite) < 1e3);
  EXPECT_FALSE(max_scaled_diff(one_inf, one_inf) < 1e3);  // even equal infinities
  // Finite inputs still compare as before.
  EXPECT_EQ(max_scaled_diff(finite, finite), 0.0);
  Tensor off = finite.clone();
  off.data<double>()[1] += 0.4;
  EXPECT_DOUBLE_EQ(max_scaled_diff(off, finite), 0.1);  // 0.4 / max |b| = 4
}

TEST(TestingHelpersTest, ScalarAndVectorDiffsFailWhenNotFinite) {
  using test::scaled_diff;
  EXPECT_FALSE(scaled_diff(kNaN, 0.5) < 1e3);
  EXPECT_FALSE(scaled_diff(0.5, kNaN) < 1e3);
  EXPECT_FALSE(scaled_diff(kInf, kInf) < 1e3);
  EXPECT_EQ(scaled_diff(0.25, 0.25), 0.0);
  EXPECT_DOUBLE_EQ(scaled_diff(0.5, 0.25), 0.25);  // scale floor 1
  EXPECT_DOUBLE_EQ(scaled_diff(3.0, 4.0), 0.25);   // relative above 1
  const std::vector<double> finite = {0.5, 0.75, 2.0};
  EXPECT_FALSE(max_scaled_diff(std::vector<double>{0.5, kNaN, 2.0}, finite) < 1e3);
  EXPECT_FALSE(max_scaled_diff(finite, std::vector<double>{0.5, 0.75, kInf}) < 1e3);
  EXPECT_FALSE(max_scaled_diff(std::vector<double>{0.5, 0.75}, finite) < 1e3);  // sizes differ
  EXPECT_FALSE(max_scaled_diff(std::vector<double>{}, finite) < 1e3);
  EXPECT_EQ(max_scaled_diff(finite, finite), 0.0);
  EXPECT_DOUBLE_EQ(max_scaled_diff(std::vector<double>{0.5, 0.75, 2.5}, finite), 0.25);
}

TEST(TestingHelpersTest, GradcheckFailsOnNonFiniteGradientOrLoss) {
  Tensor x = Tensor::from_vector<double>({3}, {0.5, -1.0, 2.0});
  auto square_sum = [&]() {
    double s = 0;
    for (int i = 0; i < 3; ++i) s += x.data<double>()[i] * x.data<double>()[i];
    return s;
  };
  const Tensor good = Tensor::from_vector<double>({3}, {1.0, -2.0, 4.0});
  EXPECT_LT(gradcheck(x, good, square_sum).max_rel_error, 1e-8);
  const Tensor nan_grad = Tensor::from_vector<double>({3}, {1.0, kNaN, 4.0});
  EXPECT_FALSE(gradcheck(x, nan_grad, square_sum).max_rel_error < 1e3);
  auto nan_loss = [&]() { return square_sum() + (x.data<double>()[2] > 2.0 ? kNaN : 0.0); };
  EXPECT_FALSE(gradcheck(x, good, nan_loss).max_rel_error < 1e3);
  // An empty input compares nothing: it scored 0, a pass.
  Tensor none = Tensor::from_vector<double>({0}, {});
  EXPECT_FALSE(gradcheck(none, Tensor::from_vector<double>({0}, {}), [] {
                 return 1.0;
               }).max_rel_error < 1e3);
}

}  // namespace
}  // namespace msa
