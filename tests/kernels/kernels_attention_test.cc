#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cpu/parallel.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;

struct Config {
  int64_t batch, T, H, G, d;
};

// Each case's inputs: q [B, T, H, d], k, v [B, T, G, d].
struct Inputs {
  Tensor q, k, v;
};

Inputs make_inputs(const Config& c, uint64_t seed, DType dtype = DType::kF64) {
  return {random_tensor({c.batch, c.T, c.H, c.d}, seed, dtype),
          random_tensor({c.batch, c.T, c.G, c.d}, seed + 1, dtype),
          random_tensor({c.batch, c.T, c.G, c.d}, seed + 2, dtype)};
}

// Explicit T x T attention per (b, h): masked score matrix, row softmax, P V.
void naive_attention(const Config& c, const Inputs& in, double scale, std::vector<double>& out,
                     std::vector<double>& lse) {
  const std::vector<double> q = in.q.to_double_vector(), k = in.k.to_double_vector(),
                            v = in.v.to_double_vector();
  out.assign(c.batch * c.T * c.H * c.d, 0.0);
  lse.assign(c.batch * c.H * c.T, 0.0);
  const int64_t r = c.H / c.G;
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t h = 0; h < c.H; ++h) {
      const int64_t g = h / r;
      std::vector<double> P(c.T * c.T, 0.0);
      for (int64_t t = 0; t < c.T; ++t) {
        double sum = 0;
        for (int64_t s = 0; s < c.T; ++s) {
          if (s > t) continue;  // causal mask: exp(-inf) = 0
          double z = 0;
          for (int64_t i = 0; i < c.d; ++i) {
            z += q[((b * c.T + t) * c.H + h) * c.d + i] * k[((b * c.T + s) * c.G + g) * c.d + i];
          }
          P[t * c.T + s] = std::exp(scale * z);
          sum += P[t * c.T + s];
        }
        for (int64_t s = 0; s < c.T; ++s) P[t * c.T + s] /= sum;
        lse[(b * c.H + h) * c.T + t] = std::log(sum);
      }
      for (int64_t t = 0; t < c.T; ++t) {
        for (int64_t s = 0; s < c.T; ++s) {
          for (int64_t i = 0; i < c.d; ++i) {
            out[((b * c.T + t) * c.H + h) * c.d + i] +=
                P[t * c.T + s] * v[((b * c.T + s) * c.G + g) * c.d + i];
          }
        }
      }
    }
  }
}

const std::vector<Config> kConfigs = {
    {2, 9, 4, 2, 8},   // GQA, 2 query heads per group
    {2, 13, 6, 2, 4},  // GQA, 3 query heads per group
    {1, 7, 3, 3, 6},   // multi-head (H = G)
    {2, 11, 4, 1, 5},  // multi-query (G = 1)
};

TEST(KernelsAttentionTest, ForwardMatchesExplicitSoftmaxMatrix) {
  for (const Config& c : kConfigs) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    Inputs in = make_inputs(c, 1);
    Tensor out = Tensor::empty(in.q.shape(), DType::kF64);
    Tensor lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF64);
    attention_forward(in.q, in.k, in.v, scale, out, lse);
    std::vector<double> want_out, want_lse;
    naive_attention(c, in, scale, want_out, want_lse);
    EXPECT_LT(test::max_scaled_diff(out, Tensor::from_vector<double>(out.shape(), want_out)), 1e-13)
        << "H " << c.H << " G " << c.G << " T " << c.T;
    EXPECT_LT(test::max_scaled_diff(lse, Tensor::from_vector<double>(lse.shape(), want_lse)), 1e-13)
        << "H " << c.H << " G " << c.G << " T " << c.T;
  }
}

TEST(KernelsAttentionTest, FirstTokenSeesOnlyItself) {
  const Config c{1, 5, 2, 1, 4};
  Inputs in = make_inputs(c, 5);
  Tensor out = Tensor::empty(in.q.shape(), DType::kF64),
         lse = Tensor::empty({1, 2, 5}, DType::kF64);
  attention_forward(in.q, in.k, in.v, 0.5, out, lse);
  const std::vector<double> o = out.to_double_vector(), v = in.v.to_double_vector();
  for (int64_t h = 0; h < c.H; ++h) {
    for (int64_t i = 0; i < c.d; ++i) EXPECT_NEAR(o[h * c.d + i], v[i], 1e-15);
  }
}

// loss = sum(out * r); checks dq, dk, dv by finite differences.
void check_attention_backward(const Config& c, double scale, uint64_t seed) {
  Inputs in = make_inputs(c, seed);
  Tensor r = random_tensor(in.q.shape(), seed + 10);
  Tensor out = Tensor::empty(in.q.shape(), DType::kF64);
  Tensor lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF64);
  auto loss = [&] {
    attention_forward(in.q, in.k, in.v, scale, out, lse);
    return test::weighted_sum(out, r);
  };
  loss();
  // Outputs start random: they must be overwritten.
  Tensor dq = random_tensor(in.q.shape(), seed + 11), dk = random_tensor(in.k.shape(), seed + 12);
  Tensor dv = random_tensor(in.v.shape(), seed + 13);
  attention_backward(r, in.q, in.k, in.v, out, lse, scale, dq, dk, dv);
  const std::string where =
      "H " + std::to_string(c.H) + " G " + std::to_string(c.G) + " T " + std::to_string(c.T) + ": ";
  auto rq = gradcheck(in.q, dq, loss);
  EXPECT_LT(rq.max_rel_error, 1e-6) << where << "dq: " << rq;
  auto rk = gradcheck(in.k, dk, loss);
  EXPECT_LT(rk.max_rel_error, 1e-6) << where << "dk: " << rk;
  auto rv = gradcheck(in.v, dv, loss);
  EXPECT_LT(rv.max_rel_error, 1e-6) << where << "dv: " << rv;
}

TEST(KernelsAttentionTest, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 100;
  for (const Config& c : kConfigs) {
    check_attention_backward(c, 1.0 / std::sqrt(static_cast<double>(c.d)), seed);
    seed += 20;
  }
}

TEST(KernelsAttentionTest, BackwardMatchesFiniteDifferencesWithSharpSoftmax) {
  // A large scale makes the softmax nearly one-hot: the regime where cancellation bites.
  check_attention_backward({1, 10, 4, 2, 8}, 1.3, 200);
}

TEST(KernelsAttentionTest, F32MatchesF64) {
  const Config c{2, 33, 4, 2, 16};
  const double scale = 0.25;
  Inputs in = make_inputs(c, 301);
  Tensor dout = random_tensor(in.q.shape(), 310);
  auto run = [&](DType dt) {
    Tensor q = in.q.to(dt), k = in.k.to(dt), v = in.v.to(dt);
    Tensor out = Tensor::empty(q.shape(), dt), lse = Tensor::empty({c.batch, c.H, c.T}, dt);
    Tensor dq = Tensor::empty(q.shape(), dt), dk = Tensor::empty(k.shape(), dt);
    Tensor dv = Tensor::empty(v.shape(), dt);
    attention_forward(q, k, v, scale, out, lse);
    attention_backward(dout.to(dt), q, k, v, out, lse, scale, dq, dk, dv);
    return std::vector<Tensor>{out, lse, dq, dk, dv};
  };
  std::vector<Tensor> f32 = run(DType::kF32), f64 = run(DType::kF64);
  for (size_t i = 0; i < f32.size(); ++i)
    EXPECT_LT(test::max_scaled_diff(f32[i], f64[i]), 1e-5) << i;
}

TEST(KernelsAttentionTest, ResultsDoNotDependOnThreadCount) {
  const Config c{2, 64, 4, 2, 32};  // enough work to be split across threads
  Inputs in = make_inputs(c, 401, DType::kF32);
  Tensor dout = random_tensor(in.q.shape(), 410, DType::kF32);
  auto run = [&](int threads) {
    cpu::set_num_threads(threads);
    Tensor out = Tensor::empty(in.q.shape(), DType::kF32);
    Tensor lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
    Tensor dq = Tensor::empty(in.q.shape(), DType::kF32);
    Tensor dk = Tensor::empty(in.k.shape(), DType::kF32);
    Tensor dv = Tensor::empty(in.v.shape(), DType::kF32);
    attention_forward(in.q, in.k, in.v, 0.2, out, lse);
    attention_backward(dout, in.q, in.k, in.v, out, lse, 0.2, dq, dk, dv);
    cpu::set_num_threads(0);
    return std::vector<Tensor>{out, lse, dq, dk, dv};
  };
  std::vector<Tensor> one = run(1), three = run(3);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(test::bitwise_equal(one[i], three[i])) << i;
}

}  // namespace
}  // namespace msa
