#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::random_tensor;

TEST(KernelsAdamWTest, StepMatchesHandExpandedFormula) {
  const int64_t n = 17;
  AdamWHyper h;
  h.lr = 0.01;
  h.beta1 = 0.8;
  h.beta2 = 0.99;
  h.eps = 1e-6;
  h.weight_decay = 0.1;
  h.grad_scale = 0.5;
  h.step = 3;
  Tensor param = random_tensor({n}, 1), grad = random_tensor({n}, 2);
  Tensor m = random_tensor({n}, 3, DType::kF64, 0.1f);
  Tensor v = random_tensor({n}, 4);
  // v must be a running mean of squares: non-negative.
  std::vector<double> v0 = v.to_double_vector();
  for (double& x : v0) x = x * x;
  v = Tensor::from_vector<double>({n}, v0);
  const std::vector<double> p0 = param.to_double_vector(), g0 = grad.to_double_vector(),
                            m0 = m.to_double_vector();
  adamw_update(param, grad, m, v, h);
  const std::vector<double> p1 = param.to_double_vector(), m1 = m.to_double_vector(),
                            v1 = v.to_double_vector();
  for (int64_t i = 0; i < n; ++i) {
    const double g = g0[i] * 0.5;
    const double m_want = 0.8 * m0[i] + 0.2 * g;
    const double v_want = 0.99 * v0[i] + 0.01 * g * g;
    const double m_hat = m_want / (1 - 0.8 * 0.8 * 0.8);
    const double v_hat = v_want / (1 - 0.99 * 0.99 * 0.99);
    const double p_want = p0[i] - 0.01 * m_hat / (std::sqrt(v_hat) + 1e-6) - 0.01 * 0.1 * p0[i];
    EXPECT_NEAR(m1[i], m_want, 1e-15);
    EXPECT_NEAR(v1[i], v_want, 1e-15);
    EXPECT_NEAR(p1[i], p_want, 1e-14);
  }
}

TEST(KernelsAdamWTest, FirstStepMovesEachParameterByLr) {
  // From m = v = 0, step 1 gives m_hat = g and v_hat = g^2: every parameter moves by lr against
  // the sign of its gradient, whatever the gradient's size.
  const int64_t n = 9;
  AdamWHyper h;
  h.lr = 1e-3;
  h.eps = 1e-12;
  Tensor param = random_tensor({n}, 11, DType::kF32), grad = random_tensor({n}, 12, DType::kF32);
  Tensor m = Tensor::zeros({n}, DType::kF32), v = Tensor::zeros({n}, DType::kF32);
  const std::vector<double> p0 = param.to_double_vector(), g = grad.to_double_vector();
  adamw_update(param, grad, m, v, h);
  const std::vector<double> p1 = param.to_double_vector();
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(p1[i] - p0[i], g[i] > 0 ? -1e-3 : 1e-3, 1e-6);
}

TEST(KernelsAdamWTest, F32MatchesF64OverSeveralSteps) {
  const int64_t n = 64;
  AdamWHyper h;
  h.lr = 0.01;
  h.weight_decay = 0.05;
  h.grad_scale = 0.7;
  auto run = [&](DType dt) {
    Tensor param = random_tensor({n}, 21, dt);
    Tensor m = Tensor::zeros({n}, dt), v = Tensor::zeros({n}, dt);
    for (int step = 1; step <= 5; ++step) {
      h.step = step;
      adamw_update(param, random_tensor({n}, 100 + step, dt), m, v, h);
    }
    return std::vector<Tensor>{param, m, v};
  };
  std::vector<Tensor> f32 = run(DType::kF32), f64 = run(DType::kF64);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_LT(test::max_scaled_diff(f32[i], f64[i]), 1e-6);
}

TEST(KernelsSumOfSquaresTest, MatchesNaiveSum) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor t = random_tensor({13, 7}, 31, dt);
    double want = 0;
    for (double x : t.to_double_vector()) want += x * x;
    EXPECT_NEAR(sum_of_squares(t), want, 1e-12 * want);
  }
}

}  // namespace
}  // namespace msa
