#include "core/tensor.h"

#include <cmath>

#include "core/bf16.h"
#include "core/rng.h"
#include "gtest/gtest.h"

namespace msa {
namespace {

TEST(TensorTest, ViewAndSliceShareStorage) {
  Tensor t = Tensor::from_vector<float>({2, 3}, {0, 1, 2, 3, 4, 5});
  Tensor row = t.slice0(1, 2).view({3});
  EXPECT_EQ(row.data<float>()[0], 3.0f);
  row.data<float>()[2] = 50.0f;
  EXPECT_EQ(t.data<float>()[5], 50.0f);
  EXPECT_EQ(t.view({-1}).size(0), 6);
}

TEST(TensorTest, DtypeConversionRoundTrips) {
  Tensor t = Tensor::from_vector<float>({3}, {1.5f, -2.25f, 1e-3f});
  Tensor d = t.to(DType::kF64);
  EXPECT_EQ(d.data<double>()[1], -2.25);
  Tensor b = t.to(DType::kBF16).to(DType::kF32);
  EXPECT_EQ(b.data<float>()[0], 1.5f);
  EXPECT_NEAR(b.data<float>()[2], 1e-3f, 1e-5f);
}

TEST(Bf16Test, RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between two bf16 values; it rounds to the even one (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  // 1 + 3*2^-8 is halfway too and rounds up to the even 1 + 2^-6.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
}

// From f64, bf16 is rounded once (to nearest even): through a plainly rounded float it rounded
// twice and 1.00390625 + 2^-40 (just above the halfway point 1.00390625) came out 1.0.
TEST(Bf16Test, FromDoubleRoundsOnce) {
  const double above_half = 1.00390625 + std::ldexp(1.0, -40);
  EXPECT_EQ(bf16_to_float(double_to_bf16(above_half)), 1.0078125f);
  EXPECT_EQ(bf16_to_float(double_to_bf16(1.00390625)), 1.0f);  // exactly halfway: to even
  EXPECT_EQ(bf16_to_float(double_to_bf16(-above_half)), -1.0078125f);
  EXPECT_EQ(bf16_to_float(double_to_bf16(1.0 + std::ldexp(1.0, -30))), 1.0f);
  EXPECT_TRUE(std::isinf(bf16_to_float(double_to_bf16(1e300))));
  EXPECT_TRUE(std::isnan(bf16_to_float(double_to_bf16(std::nan("")))));
  // Every float converts as it did (the float path rounds once already).
  for (float f : {0.1f, -3.7f, 1e-30f, 65504.0f, 3.3e38f})
    EXPECT_EQ(double_to_bf16(f).bits, float_to_bf16(f).bits) << f;
  Tensor t = Tensor::from_vector<double>({1}, {above_half});
  EXPECT_EQ(t.to(DType::kBF16).to_double_vector()[0], 1.0078125);
  Tensor u = Tensor::empty({1}, DType::kBF16);
  u.fill_(above_half);
  EXPECT_EQ(u.to_double_vector()[0], 1.0078125);
}

// A shape whose element count wraps (2^32 x 2^32 read as 0) or a NaN / out-of-range value into
// i32 (undefined behaviour) stops with a message instead.
TEST(TensorTest, OverflowingShapesAndUnrepresentableIntsAreRefused) {
  const int64_t big = int64_t(1) << 32;
  EXPECT_DEATH(Tensor::empty({big, big}, DType::kF32), "more than 2\\^63 elements");
  EXPECT_DEATH(Tensor::from_vector<double>({1}, {std::nan("")}).to(DType::kI32), "to i32");
  EXPECT_DEATH(Tensor::from_vector<double>({1}, {3e9}).to(DType::kI32), "to i32");
  Tensor i = Tensor::empty({2}, DType::kI32);
  EXPECT_DEATH(i.fill_(std::nan("")), "i32 tensor");
}

TEST(RngTest, CounterBasedAndWellDistributed) {
  EXPECT_EQ(rng_normal(7, 123), rng_normal(7, 123));
  EXPECT_NE(rng_normal(7, 123), rng_normal(8, 123));
  double sum = 0, sum2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    double x = rng_normal(42, i);
    sum += x;
    sum2 += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum2 / n, 1.0, 0.02);
}

TEST(TensorTest, FillNormalDoesNotDependOnDtype) {
  Tensor a = Tensor::empty({100}, DType::kF32);
  Tensor b = Tensor::empty({100}, DType::kF64);
  fill_normal(a, 5, 0.0f, 1.0f);
  fill_normal(b, 5, 0.0f, 1.0f);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(static_cast<double>(a.data<float>()[i]), b.data<double>()[i]);
}

}  // namespace
}  // namespace msa
