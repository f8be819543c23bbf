#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/parallel.h"
#include "kernels/matmul.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;

// y = x w^T + b by the textbook triple loop.
Tensor naive_linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  const std::vector<double> xv = x.to_double_vector(), wv = w.to_double_vector();
  std::vector<double> y(N * M);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += xv[n * K + k] * wv[m * K + k];
      y[n * M + m] = acc + (bias.defined() ? bias.to_double_vector()[m] : 0.0);
    }
  }
  return Tensor::from_vector<double>({N, M}, y);
}

TEST(KernelsLinearTest, ForwardMatchesTripleLoop) {
  // M = 300 and N = 37 cross the kernel's column and row tiles.
  const int64_t N = 37, K = 19, M = 300;
  Tensor x = random_tensor({N, K}, 1), w = random_tensor({M, K}, 2), b = random_tensor({M}, 3);
  for (bool with_bias : {true, false}) {
    Tensor bias = with_bias ? b : Tensor();
    Tensor y = Tensor::empty({N, M}, DType::kF64);
    linear_forward(x, w, bias, y);
    EXPECT_LT(test::max_scaled_diff(y, naive_linear(x, w, bias)), 1e-14) << "bias " << with_bias;
  }
}

// Checks dx, dw and dbias (when with_bias) of loss = sum(y * r) by finite differences. dw and
// dbias start from random values: they must accumulate.
void check_linear_backward(bool with_bias) {
  const int64_t N = 6, K = 5, M = 7;
  Tensor x = random_tensor({N, K}, 11), w = random_tensor({M, K}, 12);
  Tensor bias = with_bias ? random_tensor({M}, 13) : Tensor();
  Tensor r = random_tensor({N, M}, 14);
  Tensor y = Tensor::empty({N, M}, DType::kF64);
  auto loss = [&] {
    linear_forward(x, w, bias, y);
    return test::weighted_sum(y, r);
  };
  Tensor dx = random_tensor({N, K}, 15);  // overwritten
  Tensor dw0 = random_tensor({M, K}, 16), dw = dw0.clone();
  Tensor db0 = with_bias ? random_tensor({M}, 17) : Tensor();
  Tensor db = with_bias ? db0.clone() : Tensor();
  linear_backward(r, x, w, dx, dw, db);
  auto rx = gradcheck(x, dx, loss);
  EXPECT_LT(rx.max_rel_error, 1e-6) << "dx: " << rx;
  auto rw = gradcheck(w, test::difference(dw, dw0), loss);
  EXPECT_LT(rw.max_rel_error, 1e-6) << "dw: " << rw;
  if (with_bias) {
    auto rb = gradcheck(bias, test::difference(db, db0), loss);
    EXPECT_LT(rb.max_rel_error, 1e-6) << "dbias: " << rb;
  }
}

TEST(KernelsLinearTest, BackwardWithBiasMatchesFiniteDifferences) { check_linear_backward(true); }

TEST(KernelsLinearTest, BackwardWithoutBiasMatchesFiniteDifferences) {
  check_linear_backward(false);
}

TEST(KernelsLinearTest, BackwardSkipsUndefinedOutputs) {
  const int64_t N = 4, K = 3, M = 5;
  Tensor x = random_tensor({N, K}, 21), w = random_tensor({M, K}, 22);
  Tensor dy = random_tensor({N, M}, 23);
  Tensor dx_all = Tensor::empty({N, K}, DType::kF64), dw_all = Tensor::zeros({M, K}, DType::kF64);
  Tensor db_all = Tensor::zeros({M}, DType::kF64), none;
  linear_backward(dy, x, w, dx_all, dw_all, db_all);
  Tensor dx = Tensor::empty({N, K}, DType::kF64), dw = Tensor::zeros({M, K}, DType::kF64);
  linear_backward(dy, x, w, dx, none, none);
  EXPECT_TRUE(test::bitwise_equal(dx, dx_all));
  linear_backward(dy, x, w, none, dw, none);
  EXPECT_TRUE(test::bitwise_equal(dw, dw_all));
}

// DxWrite::kAccumulate adds dy W to what dx holds: against the overwritten dx plus the start.
TEST(KernelsLinearTest, BackwardAccumulatesDxWhenAsked) {
  const int64_t N = 7, K = 5, M = 6;
  Tensor x = random_tensor({N, K}, 24), w = random_tensor({M, K}, 25);
  Tensor dy = random_tensor({N, M}, 26), dx0 = random_tensor({N, K}, 27), none;
  Tensor fresh = Tensor::empty({N, K}, DType::kF64);
  linear_backward(dy, x, w, fresh, none, none);
  Tensor dx = dx0.clone();
  linear_backward(dy, x, w, dx, none, none, DxWrite::kAccumulate);
  const std::vector<double> got = dx.to_double_vector(), a = fresh.to_double_vector(),
                            b = dx0.to_double_vector();
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], a[i] + b[i], 1e-12) << "element " << i;
    ASSERT_NE(a[i], 0.0);  // the product is not trivially zero
  }
}

TEST(KernelsLinearTest, AddOutOfPlaceAndInPlace) {
  const Tensor a = random_tensor({3, 4}, 28), b = random_tensor({3, 4}, 29);
  Tensor out = Tensor::empty({3, 4}, DType::kF64), into_a = a.clone();
  add(a, b, out);
  add(into_a, b, into_a);
  const std::vector<double> o = out.to_double_vector(), av = a.to_double_vector(),
                            bv = b.to_double_vector();
  for (size_t i = 0; i < o.size(); ++i) ASSERT_EQ(o[i], av[i] + bv[i]) << "element " << i;
  EXPECT_TRUE(test::bitwise_equal(into_a, out));
}

TEST(KernelsLinearTest, F32MatchesF64) {
  const int64_t N = 20, K = 33, M = 17;
  Tensor x = random_tensor({N, K}, 31), w = random_tensor({M, K}, 32), b = random_tensor({M}, 33);
  Tensor dy = random_tensor({N, M}, 34);
  auto run = [&](DType dt) {
    Tensor y = Tensor::empty({N, M}, dt), dx = Tensor::empty({N, K}, dt);
    Tensor dw = Tensor::zeros({M, K}, dt), db = Tensor::zeros({M}, dt);
    linear_forward(x.to(dt), w.to(dt), b.to(dt), y);
    linear_backward(dy.to(dt), x.to(dt), w.to(dt), dx, dw, db);
    return std::vector<Tensor>{y, dx, dw, db};
  };
  std::vector<Tensor> f32 = run(DType::kF32), f64 = run(DType::kF64);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_LT(test::max_scaled_diff(f32[i], f64[i]), 1e-5);
}

TEST(KernelsLinearTest, ResultsDoNotDependOnThreadCount) {
  const int64_t N = 130, K = 64, M = 300;  // enough work to be split across threads
  Tensor x = random_tensor({N, K}, 41, DType::kF32), w = random_tensor({M, K}, 42, DType::kF32);
  Tensor dy = random_tensor({N, M}, 43, DType::kF32);
  auto run = [&](int threads) {
    cpu::set_num_threads(threads);
    Tensor y = Tensor::empty({N, M}, DType::kF32), dx = Tensor::empty({N, K}, DType::kF32);
    Tensor dw = Tensor::zeros({M, K}, DType::kF32), none;
    linear_forward(x, w, none, y);
    linear_backward(dy, x, w, dx, dw, none);
    cpu::set_num_threads(0);
    return std::vector<Tensor>{y, dx, dw};
  };
  std::vector<Tensor> one = run(1), four = run(4);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(test::bitwise_equal(one[i], four[i])) << i;
}

TEST(KernelsElementwiseTest, AddAndScaleInPlace) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    Tensor y = random_tensor({3, 5}, 51, dt), x = random_tensor({3, 5}, 52, dt);
    const std::vector<double> y0 = y.to_double_vector(), x0 = x.to_double_vector();
    add_inplace(y, x);
    scale_inplace(y, -0.5);
    const std::vector<double> got = y.to_double_vector();
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], -0.5 * (y0[i] + x0[i]), 1e-6);
  }
}

}  // namespace
}  // namespace msa
