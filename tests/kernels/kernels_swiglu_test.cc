#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/swiglu.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;

TEST(KernelsSwigluTest, ForwardMatchesDefinition) {
  const int64_t N = 4, F = 9;
  Tensor gate = random_tensor({N, F}, 1, DType::kF64, 4.0f), up = random_tensor({N, F}, 2);
  Tensor out = Tensor::empty({N, F}, DType::kF64);
  swiglu_forward(gate, up, out);
  const std::vector<double> g = gate.to_double_vector(), u = up.to_double_vector();
  const std::vector<double> o = out.to_double_vector();
  for (size_t i = 0; i < g.size(); ++i) {
    EXPECT_NEAR(o[i], g[i] / (1 + std::exp(-g[i])) * u[i], 1e-14 * (1 + std::abs(o[i])));
  }
}

TEST(KernelsSwigluTest, SaturatesWithoutNaN) {
  Tensor gate = Tensor::from_vector<float>({1, 4}, {-1000.0f, -90.0f, 90.0f, 1000.0f});
  Tensor up = Tensor::from_vector<float>({1, 4}, {1.0f, 1.0f, 1.0f, 1.0f});
  Tensor out = Tensor::empty({1, 4}, DType::kF32);
  swiglu_forward(gate, up, out);
  const std::vector<double> o = out.to_double_vector();
  EXPECT_EQ(o[0], 0.0);
  EXPECT_NEAR(o[1], 0.0, 1e-30);
  EXPECT_EQ(o[2], 90.0);
  EXPECT_EQ(o[3], 1000.0);
}

TEST(KernelsSwigluTest, BackwardMatchesFiniteDifferences) {
  const int64_t N = 5, F = 7;
  // A wide gate distribution reaches both tails of the sigmoid.
  Tensor gate = random_tensor({N, F}, 11, DType::kF64, 3.0f), up = random_tensor({N, F}, 12);
  Tensor r = random_tensor({N, F}, 13), out = Tensor::empty({N, F}, DType::kF64);
  auto loss = [&] {
    swiglu_forward(gate, up, out);
    return test::weighted_sum(out, r);
  };
  Tensor dgate = Tensor::empty({N, F}, DType::kF64), dup = Tensor::empty({N, F}, DType::kF64);
  swiglu_backward(r, gate, up, dgate, dup);
  auto rg = gradcheck(gate, dgate, loss);
  EXPECT_LT(rg.max_rel_error, 1e-6) << "dgate: " << rg;
  auto ru = gradcheck(up, dup, loss);
  EXPECT_LT(ru.max_rel_error, 1e-6) << "dup: " << ru;
}

TEST(KernelsSwigluTest, F32MatchesF64) {
  const int64_t N = 8, F = 32;
  Tensor gate = random_tensor({N, F}, 21, DType::kF64, 2.0f), up = random_tensor({N, F}, 22);
  Tensor dout = random_tensor({N, F}, 23);
  auto run = [&](DType dt) {
    Tensor out = Tensor::empty({N, F}, dt), dg = Tensor::empty({N, F}, dt);
    Tensor du = Tensor::empty({N, F}, dt);
    swiglu_forward(gate.to(dt), up.to(dt), out);
    swiglu_backward(dout.to(dt), gate.to(dt), up.to(dt), dg, du);
    return std::vector<Tensor>{out, dg, du};
  };
  std::vector<Tensor> f32 = run(DType::kF32), f64 = run(DType::kF64);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_LT(test::max_scaled_diff(f32[i], f64[i]), 1e-6);
}

}  // namespace
}  // namespace msa
