// The memory estimate msa-train refuses runs with (train/memory_estimate.h) against what a CUDA
// training step really holds at its peak (the caching allocator's tensor bytes): the estimate must
// not exceed it (a run that fits would be refused) and must not be far below it (a run that
// cannot fit would start and die later). Skips without a CUDA device.
#include <cstdio>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "gtest/gtest.h"
#include "model/transformer.h"
#include "train/memory_estimate.h"
#include "train/optimizer.h"

namespace msa {
namespace {

ModelConfig config(bool msa) {
  ModelConfig c;
  c.vocab_size = 8192;
  c.d_model = 512;
  c.n_layers = 4;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.ffn_dim = 1536;
  c.msa.block_size = 64;
  c.msa.topk = 8;
  c.msa.index_dim = 64;
  c.attention.assign(c.n_layers, msa ? AttentionKind::kMsa : AttentionKind::kDense);
  return c;
}

// Peak tensor bytes of two training steps (forward, backward, AdamW) from an empty allocator.
double measured_peak(const ModelConfig& c, int64_t batch, int64_t T, Recompute recompute) {
  reset_cuda_peak_memory();
  const size_t before = cuda_memory_stats().in_use_bytes;
  {
    Transformer model(c, DType::kBF16, Device::kCUDA);
    model.set_recompute(recompute);
    model.params().initialize(1);
    AdamW opt(model.params(), OptimizerConfig{});
    std::vector<int32_t> tok(batch * T), tgt(batch * T);
    for (int64_t i = 0; i < batch * T; ++i)
      tok[i] = static_cast<int32_t>(philox4x32(9, i).v[0] % c.vocab_size);
    for (int64_t i = 0; i < batch * T; ++i) tgt[i] = tok[(i + 1) % (batch * T)];
    const Tensor tokens = Tensor::from_vector<int32_t>({batch, T}, tok).to(Device::kCUDA);
    const Tensor targets = Tensor::from_vector<int32_t>({batch, T}, tgt).to(Device::kCUDA);
    ForwardOptions fo;
    fo.msa_mode = MsaMode::kSparse;
    for (int s = 1; s <= 2; ++s) {
      model.params().zero_grads();
      model.forward(tokens, targets, fo);
      model.backward(1.0);
      opt.step(s, 1e-4, opt.grad_norm());
    }
  }
  return static_cast<double>(cuda_memory_stats().peak_bytes - before);
}

TEST(GpuMemoryEstimateTest, EstimateIsBelowButNearTheMeasuredPeak) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (bool msa : {false, true}) {
    for (Recompute r : {Recompute::kNone, Recompute::kFull}) {
      MemoryEstimateOptions o;
      o.model = config(msa);
      o.batch_size = 2;
      o.seq_len = 2048;
      o.cuda = true;
      o.recompute = r;
      const double estimate = estimate_training_memory(o).total();
      const double peak = measured_peak(o.model, o.batch_size, o.seq_len, r);
      std::printf("%s, recompute %s: estimate %s, measured peak %s (ratio %.3f)\n",
                  msa ? "msa" : "dense", recompute_name(r), memory_string(estimate).c_str(),
                  memory_string(peak).c_str(), estimate / peak);
      // Conservative: refusing only above the free memory must never refuse what fits.
      EXPECT_LE(estimate, 1.02 * peak) << (msa ? "msa " : "dense ") << recompute_name(r);
      EXPECT_GE(estimate, 0.6 * peak) << (msa ? "msa " : "dense ") << recompute_name(r);
    }
  }
}

// Peak tensor bytes of one forward without a backward (evaluation, msa-eval).
double measured_inference_peak(const ModelConfig& c, int64_t batch, int64_t T) {
  Transformer model(c, DType::kBF16, Device::kCUDA);
  model.set_recompute(Recompute::kNone);  // inference keeps no layer whatever recompute says
  model.params().initialize(1);
  std::vector<int32_t> tok(batch * T);
  for (int64_t i = 0; i < batch * T; ++i)
    tok[i] = static_cast<int32_t>(philox4x32(9, i).v[0] % c.vocab_size);
  const Tensor tokens = Tensor::from_vector<int32_t>({batch, T}, tok).to(Device::kCUDA);
  ForwardOptions fo;
  fo.msa_mode = MsaMode::kSparse;
  fo.for_backward = false;
  reset_cuda_peak_memory();
  const size_t before = cuda_memory_stats().in_use_bytes;
  model.forward(tokens, tokens, fo);
  return static_cast<double>(cuda_memory_stats().peak_bytes - before);
}

// msa-eval's check refuses a length whose estimate exceeds the free memory, so the estimate must
// not exceed the peak. Evaluation held every layer's activations before (the peak grew with the
// depth, 8 layers here), then every MSA layer's selection beside the logits, and the estimate
// summed a layer's buffers and the head's (1.6x the peak). Vocabulary 8192: the logits make the
// peak; 256: a layer's MLP does.
TEST(GpuMemoryEstimateTest, InferenceEstimateIsBelowButNearTheMeasuredPeak) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (int vocab : {8192, 256}) {
    for (bool msa : {false, true}) {
      MemoryEstimateOptions o;
      o.model = config(msa);
      o.model.vocab_size = vocab;
      o.model.n_layers = 8;
      o.model.attention.assign(8, msa ? AttentionKind::kMsa : AttentionKind::kDense);
      o.batch_size = 2;
      o.seq_len = 2048;
      o.cuda = true;
      MemoryEstimate e = estimate_inference_memory(o);
      // The parameters were allocated before the measurement began.
      const double estimate = e.total() - e.parameters;
      const double peak = measured_inference_peak(o.model, o.batch_size, o.seq_len);
      std::printf(
          "%s inference, vocab %d: estimate %s (without parameters), measured peak %s "
          "(ratio %.3f)\n",
          msa ? "msa" : "dense", vocab, memory_string(estimate).c_str(),
          memory_string(peak).c_str(), estimate / peak);
      EXPECT_LE(estimate, 1.02 * peak) << (msa ? "msa " : "dense ") << vocab;
      EXPECT_GE(estimate, 0.75 * peak) << (msa ? "msa " : "dense ") << vocab;
    }
  }
}

}  // namespace
}  // namespace msa
