// The vocabulary-parallel embedding and cross entropy on the GPU (bf16 tables and logits, f32
// gradients and statistics, as the model runs them) against the CPU reference on the same
// bf16-rounded inputs, for a slice [vocab_begin, vocab_begin + V_local) of a larger vocabulary
// with tokens and targets inside and outside it and ignored rows; and the slices' exchange done by
// hand on one GPU (what the tp ranks' all-gather and all-reduce compute) against the unsplit
// cross entropy. Outputs start as NaN so that an element left unwritten fails. Skips without a
// CUDA device.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "model/tensor_parallel.h"
#include "model/transformer.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/gpu.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h and gradcheck.h

using test::max_scaled_diff;
using test::random_tensor;


// a * t as an f64 CPU tensor.
Tensor scaled(const Tensor& t, double a) {
  std::vector<double> x = t.to_double_vector();
  for (double& v : x) v *= a;
  return Tensor::from_vector<double>(t.shape(), x);
}

// Global ids over a vocabulary of `vocab` entries: about a third inside [v0, v0 + vl), the rest
// outside on both sides, every `ignore_every`-th one ignore_index (0: none).
Tensor ids(int64_t n, int64_t vocab, int64_t v0, int64_t vl, int ignore_every) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) {
    if (ignore_every > 0 && i % ignore_every == ignore_every - 1) {
      t[i] = kIgnoreIndex;
    } else if (i % 3 == 0) {
      t[i] = static_cast<int32_t>(v0 + (i * 7919 + 13) % vl);  // in the slice
    } else {
      t[i] = static_cast<int32_t>((i * 104729 + 5) % vocab);  // mostly outside
    }
  }
  return Tensor::from_vector<int32_t>({n}, t);
}

int64_t count_in_slice(const Tensor& t, int64_t v0, int64_t vl) {
  int64_t in = 0;
  for (const double x : t.to_double_vector()) in += x >= v0 && x < v0 + vl;
  return in;
}

TEST(GpuVocabParallelTest, EmbeddingSliceMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t vocab = 400, vl = 100, v0 = 200, D = 96, N = 600;
  const Tensor tokens = ids(N, vocab, v0, vl, 0);
  const int64_t in = count_in_slice(tokens, v0, vl);
  ASSERT_GT(in, 100);
  ASSERT_LT(in, N - 100);
  const Tensor table = rnd({vl, D}, 10), dout = rnd({N, D}, 11);
  Tensor out = Tensor::empty({N, D}, DType::kF32);
  vocab_parallel_embedding_forward(tokens, table, v0, out);
  Tensor gout = gpu_nan({N, D}, DType::kBF16);
  vocab_parallel_embedding_forward(tokens.to(Device::kCUDA), gpu_bf16(table), v0, gout);
  EXPECT_EQ(host(gout).to_double_vector(), out.to_double_vector());  // a copy or 0: exact

  // Accumulates into a nonzero gradient; rows no token hits keep it.
  const Tensor dt0 = random_tensor({vl, D}, 12, DType::kF32);
  Tensor dtable = dt0.clone();
  vocab_parallel_embedding_backward(dout, tokens, v0, dtable);
  Tensor gdtable = gpu_f32(dt0);
  vocab_parallel_embedding_backward(gpu_bf16(dout), tokens.to(Device::kCUDA), v0, gdtable);
  EXPECT_LT(max_scaled_diff(host(gdtable), dtable), 1e-5);
  EXPECT_GT(max_scaled_diff(dtable, dt0), 0.1);  // the slice's tokens did add something
}

// With tp = nullptr the op is the cross entropy of the slice alone (targets outside it count
// with a target logit of 0): the same contract on both devices, which is what is compared here.
// The slice is the vocabulary's last (tp = nullptr accepts targets up to the slice's end).
TEST(GpuVocabParallelTest, CrossEntropySliceForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const int64_t vl : {4096, 1001}) {  // the vectorized rows and the scalar ones
    const int64_t vocab = 4 * vl, v0 = 3 * vl, N = 300;
    const Tensor logits = rnd({N, vl}, 20 + vl, 3.0f);
    const Tensor targets = ids(N, vocab, v0, vl, 7);
    Tensor lse = Tensor::empty({N}, DType::kF32);
    const VocabParallelCrossEntropy ref =
        vocab_parallel_cross_entropy_forward(logits, targets, v0, kIgnoreIndex, lse, nullptr);
    const Tensor gtargets = targets.to(Device::kCUDA);
    Tensor glogits = gpu_bf16(logits), glse = gpu_nan({N}, DType::kF32);
    const VocabParallelCrossEntropy got =
        vocab_parallel_cross_entropy_forward(glogits, gtargets, v0, kIgnoreIndex, glse, nullptr);
    EXPECT_EQ(got.n_counted, ref.n_counted) << "V_local " << vl;
    EXPECT_EQ(ref.n_counted, N - N / 7);
    ASSERT_TRUE(std::isfinite(got.loss));
    EXPECT_NEAR(got.loss, ref.loss, 1e-4 * std::abs(ref.loss)) << "V_local " << vl;
    EXPECT_LT(max_scaled_diff(host(glse), lse), 1e-5) << "V_local " << vl;

    Tensor dlogits = Tensor::empty({N, vl}, DType::kF32);
    vocab_parallel_cross_entropy_backward(logits, targets, lse, v0, kIgnoreIndex, ref.n_counted,
                                          2.5, dlogits);
    // Out of place into NaN (every element, ignored rows' zeros too, must be written) and in
    // place on the logits, as the model runs it.
    Tensor gd = gpu_nan({N, vl}, DType::kBF16);
    vocab_parallel_cross_entropy_backward(glogits, gtargets, glse, v0, kIgnoreIndex, got.n_counted,
                                          2.5, gd);
    vocab_parallel_cross_entropy_backward(glogits, gtargets, glse, v0, kIgnoreIndex, got.n_counted,
                                          2.5, glogits);
    // On the scale of the one-hot entries (2.5 / n_counted), not of 1.
    const double unit = static_cast<double>(ref.n_counted) / 2.5;
    const Tensor want = scaled(dlogits, unit);
    EXPECT_LT(max_scaled_diff(scaled(host(gd), unit), want), kBf16Tol) << "V_local " << vl;
    EXPECT_LT(max_scaled_diff(scaled(host(glogits), unit), want), kBf16Tol) << "V_local " << vl;
  }
}

// What tp = S ranks compute, on one GPU: each slice's pass, the all-gather of the slices'
// log-sum-exps (rows of all_lse) and the all-reduce of the target logits (a sum), the combine,
// then each slice's backward, against the unsplit CPU cross entropy of the whole logits.
TEST(GpuVocabParallelTest, SlicesCombinedOnTheGpuEqualTheWholeVocabulary) {
  SKIP_WITHOUT_GPU();
  const int64_t S = 4, vl = 2048, vocab = S * vl, N = 256;
  const Tensor logits = rnd({N, vocab}, 30, 3.0f);
  const Tensor targets = ids(N, vocab, vl, vl, 5);
  Tensor lse = Tensor::empty({N}, DType::kF32);
  const CrossEntropyResult ref = cross_entropy_forward(logits, targets, kIgnoreIndex, lse);
  Tensor dlogits = Tensor::empty({N, vocab}, DType::kF32);
  cross_entropy_backward(logits, targets, lse, kIgnoreIndex, ref.n_counted, 1.0, dlogits);

  const Tensor gtargets = targets.to(Device::kCUDA);
  std::vector<Tensor> slices;
  Tensor all_lse = gpu_nan({S, N}, DType::kF32);
  Tensor target_logit = Tensor::zeros({N}, DType::kF32, Device::kCUDA);
  for (int64_t s = 0; s < S; ++s) {
    slices.push_back(gpu_bf16(tp_slice(logits, TpSplit::kCols, static_cast<int>(s), S)));
    Tensor slice_lse = all_lse.slice0(s, s + 1).view({N});
    Tensor slice_target = gpu_nan({N}, DType::kF32);
    cross_entropy_slice_forward(slices.back(), gtargets, s * vl, slice_lse, slice_target);
    add_inplace(target_logit, slice_target);
  }
  Tensor glse = gpu_nan({N}, DType::kF32);
  const CrossEntropyResult got =
      cross_entropy_combine(all_lse, target_logit, gtargets, vocab, kIgnoreIndex, glse);
  EXPECT_EQ(got.n_counted, ref.n_counted);
  ASSERT_TRUE(std::isfinite(got.loss));
  EXPECT_NEAR(got.loss, ref.loss, 1e-4 * std::abs(ref.loss));
  EXPECT_LT(max_scaled_diff(host(glse), lse), 1e-5);

  const double unit = static_cast<double>(ref.n_counted);
  for (int64_t s = 0; s < S; ++s) {
    cross_entropy_slice_backward(slices[s], gtargets, glse, s * vl, kIgnoreIndex, got.n_counted,
                                 1.0, slices[s]);
    const Tensor want = scaled(tp_slice(dlogits, TpSplit::kCols, static_cast<int>(s), S), unit);
    EXPECT_LT(max_scaled_diff(scaled(host(slices[s]), unit), want), kBf16Tol) << "slice " << s;
  }
}

}  // namespace
}  // namespace msa
