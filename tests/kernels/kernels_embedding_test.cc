#include <vector>

#include "gtest/gtest.h"
#include "kernels/embedding.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::gradcheck;
using test::random_tensor;

TEST(KernelsEmbeddingTest, ForwardCopiesTheTokensRows) {
  const int64_t V = 6, D = 5;
  Tensor table = random_tensor({V, D}, 1, DType::kF32);
  Tensor tokens = Tensor::from_vector<int32_t>({4}, {5, 0, 5, 2});
  Tensor out = Tensor::empty({4, D}, DType::kF32);
  embedding_forward(tokens, table, out);
  const std::vector<double> t = table.to_double_vector(), o = out.to_double_vector();
  const std::vector<int> ids = {5, 0, 5, 2};
  for (int n = 0; n < 4; ++n) {
    for (int i = 0; i < D; ++i) EXPECT_EQ(o[n * D + i], t[ids[n] * D + i]);
  }
}

TEST(KernelsEmbeddingTest, BackwardWithRepeatedTokensMatchesFiniteDifferences) {
  const int64_t V = 7, D = 4, N = 10;
  Tensor table = random_tensor({V, D}, 11);
  // Token 3 appears three times, 1 twice; 0, 4 and 6 never (their gradient rows stay put).
  Tensor tokens = Tensor::from_vector<int32_t>({N}, {3, 1, 3, 5, 2, 1, 3, 5, 2, 4});
  Tensor r = random_tensor({N, D}, 12), out = Tensor::empty({N, D}, DType::kF64);
  auto loss = [&] {
    embedding_forward(tokens, table, out);
    return test::weighted_sum(out, r);
  };
  Tensor dtable0 = random_tensor({V, D}, 13), dtable = dtable0.clone();  // accumulates
  embedding_backward(r, tokens, dtable);
  auto result = gradcheck(table, test::difference(dtable, dtable0), loss);
  EXPECT_LT(result.max_rel_error, 1e-6) << result;
}

TEST(KernelsEmbeddingTest, F32MatchesF64) {
  const int64_t V = 9, D = 6, N = 12;
  Tensor table = random_tensor({V, D}, 21), dout = random_tensor({N, D}, 22);
  Tensor tokens = Tensor::from_vector<int32_t>({N}, {0, 8, 8, 3, 3, 3, 1, 2, 7, 6, 5, 4});
  auto run = [&](DType dt) {
    Tensor out = Tensor::empty({N, D}, dt), dtable = Tensor::zeros({V, D}, dt);
    embedding_forward(tokens, table.to(dt), out);
    embedding_backward(dout.to(dt), tokens, dtable);
    return std::vector<Tensor>{out, dtable};
  };
  std::vector<Tensor> f32 = run(DType::kF32), f64 = run(DType::kF64);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_LT(test::max_scaled_diff(f32[i], f64[i]), 1e-6);
}

}  // namespace
}  // namespace msa
