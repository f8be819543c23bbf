#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/rope.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;
using ::testing::HasSubstr;

RopeConfig plain(double theta) { return RopeConfig{theta}; }

RopeConfig llama3(double theta, double factor, double low, double high, double original,
                  int64_t rotary_dim = 0) {
  RopeConfig r{theta};
  r.scaling = {RopeScalingType::kLlama3, factor, low, high, original};
  r.rotary_dim = rotary_dim;
  return r;
}

RopeConfig linear(double theta, double factor) {
  RopeConfig r{theta};
  r.scaling.type = RopeScalingType::kLinear;
  r.scaling.factor = factor;
  return r;
}

// y = R x by the formula of kernels/rope.h, written out with the test's own frequencies.
std::vector<double> reference_rope(const std::vector<double>& x, int64_t B, int64_t T, int64_t H,
                                   int64_t d, int64_t r, const std::vector<double>& freq) {
  std::vector<double> y = x;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < T; ++p)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = ((b * T + p) * H + h) * d;
        for (int64_t i = 0; i < r / 2; ++i) {
          const double angle = p * freq[i];
          const double x1 = x[base + i], x2 = x[base + i + r / 2];
          y[base + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
          y[base + i + r / 2] = x2 * std::cos(angle) + x1 * std::sin(angle);
        }
      }
  return y;
}

// ---- the inverse-frequency table -------------------------------------------------------------

// Llama 3.1's published parameters on a head of 64 at theta 500000, against transformers'
// _compute_llama3_parameters written out here: wavelengths below 8192 / 4 = 2048 keep their
// frequency, those above 8192 / 1 are divided by 32, those between are interpolated with
// smooth = (8192 / wavelength - 1) / (4 - 1).
TEST(KernelsRopeTest, Llama3TableMatchesTransformersFormula) {
  const std::vector<double> f = rope_inv_freq(llama3(500000.0, 32, 1, 4, 8192), 64);
  ASSERT_EQ(f.size(), 32u);
  int kept = 0, divided = 0, smoothed = 0;
  for (int i = 0; i < 32; ++i) {
    const double base = std::pow(500000.0, -i / 32.0);
    const double wavelen = 2 * std::numbers::pi / base;
    double expected;
    if (wavelen < 2048) {
      expected = base, ++kept;
    } else if (wavelen > 8192) {
      expected = base / 32, ++divided;
    } else {
      const double smooth = (8192 / wavelen - 1) / 3;
      expected = base * ((1 - smooth) / 32 + smooth), ++smoothed;
    }
    EXPECT_NEAR(f[i], expected, 1e-15 * base) << "i = " << i;
  }
  // theta^(-i/32) crosses 2 pi / 2048 between i = 14 and 15 and 2 pi / 8192 between 17 and 18.
  EXPECT_EQ(kept, 15);
  EXPECT_EQ(smoothed, 3);
  EXPECT_EQ(divided, 14);
  EXPECT_EQ(f[0], 1.0);
  EXPECT_NEAR(f[31], std::pow(500000.0, -31.0 / 32) / 32, 1e-20);
  for (int i = 1; i < 32; ++i) EXPECT_LT(f[i], f[i - 1]) << "not decreasing at " << i;
}

TEST(KernelsRopeTest, LinearTableDividesEveryFrequency) {
  const std::vector<double> f = rope_inv_freq(linear(10000.0, 4), 16);
  ASSERT_EQ(f.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(f[i], std::pow(10000.0, -i / 8.0) / 4, 1e-16);
}

// transformers: rotary_dim = int(head_dim * partial_rotary_factor), frequencies over rotary_dim.
TEST(KernelsRopeTest, PartialTableSpansTheRotaryDims) {
  RopeConfig r = plain(500000.0);
  r.rotary_dim = 32;  // head 64, partial_rotary_factor 0.5
  const std::vector<double> f = rope_inv_freq(r, 64);
  ASSERT_EQ(f.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(f[i], std::pow(500000.0, -2.0 * i / 32), 1e-16);
  EXPECT_EQ(rope_inv_freq(plain(500000.0), 64).size(), 32u);
}

TEST(KernelsRopeTest, InvalidConfigsAreRefusedNamingTheField) {
  auto error = [](const RopeConfig& r, int64_t d) {
    const absl::Status s = validate_rope(r, d);
    return s.ok() ? std::string("ok") : std::string(s.message());
  };
  EXPECT_EQ(error(llama3(500000.0, 32, 1, 4, 8192, 32), 64), "ok");
  EXPECT_THAT(error(plain(0), 8), HasSubstr("rope_theta"));
  EXPECT_THAT(error(plain(INFINITY), 8), HasSubstr("rope_theta"));
  RopeConfig odd = plain(1e4);
  odd.rotary_dim = 5;
  EXPECT_THAT(error(odd, 8), HasSubstr("rotary_dim: 5 must be even"));
  odd.rotary_dim = 10;
  EXPECT_THAT(error(odd, 8), HasSubstr("rotary_dim: 10 must be even and in [2, head_dim = 8]"));
  EXPECT_THAT(error(linear(1e4, 0), 8), HasSubstr("rope_scaling.factor"));
  EXPECT_THAT(error(linear(1e4, NAN), 8), HasSubstr("rope_scaling.factor"));
  EXPECT_THAT(error(llama3(1e4, 8, 4, 4, 8192), 8), HasSubstr("rope_scaling.high_freq_factor"));
  EXPECT_THAT(error(llama3(1e4, 8, 0, 4, 8192), 8), HasSubstr("rope_scaling.low_freq_factor"));
  EXPECT_THAT(error(llama3(1e4, 8, 1, 4, 0), 8),
              HasSubstr("rope_scaling.original_max_position_embeddings"));
}

// ---- the rotation ---------------------------------------------------------------------------

TEST(KernelsRopeTest, ForwardMatchesRotateHalfFormula) {
  const int64_t B = 2, T = 6, H = 3, d = 8;
  for (double theta : {10000.0, 1e6, 3.5}) {
    Tensor x = random_tensor({B, T, H, d}, 1), y = Tensor::empty({B, T, H, d}, DType::kF64);
    rope_forward(x, plain(theta), y);
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

// Only the first rotary_dim dims rotate (pairs i, i + rotary_dim / 2); the rest are copied.
TEST(KernelsRopeTest, PartialRotaryRotatesTheLeadingDimsAndPassesTheRest) {
  const int64_t B = 2, T = 7, H = 3, d = 12, r = 6;
  RopeConfig rope = llama3(1000.0, 4, 1, 4, 4, r);
  Tensor x = random_tensor({B, T, H, d}, 3), y = Tensor::empty({B, T, H, d}, DType::kF64);
  y.fill_(NAN);  // the pass-through dims must be written too
  rope_forward(x, rope, y);
  const std::vector<double> xv = x.to_double_vector(), yv = y.to_double_vector();
  const std::vector<double> expected = reference_rope(xv, B, T, H, d, r, rope_inv_freq(rope, d));
  for (size_t i = 0; i < yv.size(); ++i) EXPECT_NEAR(yv[i], expected[i], 1e-14) << i;
  for (int64_t row = 0; row < B * T * H; ++row)
    for (int64_t j = r; j < d; ++j) EXPECT_EQ(yv[row * d + j], xv[row * d + j]);
  // Not vacuous: the rotated dims moved.
  EXPECT_NE(yv[(1 * H) * d + 0], xv[(1 * H) * d + 0]);
}

// 'linear' is position interpolation: position 4p with factor 4 is plain RoPE's position p.
TEST(KernelsRopeTest, LinearScalingDividesPositions) {
  const int64_t T = 24, d = 8;
  Tensor u = random_tensor({d}, 4);
  std::vector<double> xv;
  for (int64_t p = 0; p < T; ++p)
    for (double v : u.to_double_vector()) xv.push_back(v);
  const Tensor x = Tensor::from_vector<double>({1, T, 1, d}, xv);
  Tensor scaled = x.clone(), unscaled = x.clone();
  rope_forward(x, linear(100.0, 4), scaled);
  rope_forward(x, plain(100.0), unscaled);
  const std::vector<double> s = scaled.to_double_vector(), n = unscaled.to_double_vector();
  for (int64_t p = 0; p < T / 4; ++p)
    for (int64_t i = 0; i < d; ++i) EXPECT_NEAR(s[4 * p * d + i], n[p * d + i], 1e-13);
  EXPECT_GT(std::abs(s[d] - n[d]), 1e-6);  // position 1 differs
}

TEST(KernelsRopeTest, DotProductsDependOnlyOnRelativePosition) {
  // The same vector u at every position: <R(p) u, R(p') u> = <u, R(p' - p) u>, for every variant.
  const int64_t T = 12, d = 16;
  Tensor u = random_tensor({d}, 2);
  std::vector<double> xv;
  for (int64_t p = 0; p < T; ++p) {
    for (double value : u.to_double_vector()) xv.push_back(value);
  }
  RopeConfig partial = plain(500.0);
  partial.rotary_dim = 8;
  for (const RopeConfig& rope : {plain(500.0), llama3(500.0, 8, 1, 4, 16, 8), partial}) {
    Tensor x = Tensor::from_vector<double>({1, T, 1, d}, xv), y = x.clone();
    rope_forward(x, rope, y);
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
}

TEST(KernelsRopeTest, BackwardMatchesFiniteDifferences) {
  const int64_t B = 2, T = 9, H = 2, d = 10;
  for (const RopeConfig& rope : {plain(1e6), llama3(1e4, 8, 1, 4, 4, 6)}) {
    Tensor x = random_tensor({B, T, H, d}, 11), r = random_tensor({B, T, H, d}, 12);
    Tensor y = Tensor::empty({B, T, H, d}, DType::kF64);
    auto loss = [&] {
      rope_forward(x, rope, y);
      return test::weighted_sum(y, r);
    };
    Tensor dx = Tensor::empty({B, T, H, d}, DType::kF64);
    rope_backward(r, rope, dx);
    auto result = gradcheck(x, dx, loss);
    EXPECT_LT(result.max_rel_error, 1e-6) << result;
  }
}

TEST(KernelsRopeTest, InPlaceMatchesOutOfPlace) {
  const int64_t B = 1, T = 7, H = 4, d = 6;
  RopeConfig partial = linear(10000.0, 2);
  partial.rotary_dim = 4;
  for (const RopeConfig& rope : {plain(10000.0), partial}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      Tensor x = random_tensor({B, T, H, d}, 21, dt), y = Tensor::empty({B, T, H, d}, dt);
      rope_forward(x, rope, y);
      Tensor inplace = x.clone();
      rope_forward(inplace, rope, inplace);
      EXPECT_TRUE(test::bitwise_equal(inplace, y));
      Tensor dx = Tensor::empty({B, T, H, d}, dt);
      rope_backward(y, rope, dx);
      rope_backward(inplace, rope, inplace);
      EXPECT_TRUE(test::bitwise_equal(inplace, dx));
      EXPECT_LT(test::max_scaled_diff(dx, x), dt == DType::kF32 ? 1e-6 : 1e-14);  // R^T R = I
    }
  }
}

TEST(KernelsRopeTest, F32MatchesF64AtLongPositions) {
  const int64_t T = 3000, d = 8;
  Tensor x = random_tensor({1, T, 1, d}, 31);
  for (const RopeConfig& rope : {plain(10000.0), llama3(500000.0, 32, 1, 4, 64)}) {
    Tensor y64 = Tensor::empty({1, T, 1, d}, DType::kF64);
    Tensor y32 = Tensor::empty({1, T, 1, d}, DType::kF32);
    rope_forward(x, rope, y64);
    rope_forward(x.to(DType::kF32), rope, y32);
    EXPECT_LT(test::max_scaled_diff(y32, y64), 1e-6);
  }
}

}  // namespace
}  // namespace msa
