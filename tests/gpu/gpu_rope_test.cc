// The CUDA RoPE kernel against the CPU reference for the scaled and partial variants (llama3,
// linear, partial rotary; bf16 inputs rounded identically for both sides, tolerance 1e-2 of the
// reference's scale), out of place (the pass-through dims are copied: the output starts as NaN)
// and in place, and a whole model with llama3 scaling and partial rotary: loss and every gradient
// against the CPU model. Skips without a CUDA device.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/rope.h"
#include "model/transformer.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/gpu.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h and gradcheck.h

using test::max_scaled_diff;
using test::random_tensor;


RopeConfig llama3(int64_t rotary_dim) {
  RopeConfig r;
  r.theta = 500000.0;
  r.scaling = {RopeScalingType::kLlama3, 32.0, 1.0, 4.0, 64.0};
  r.rotary_dim = rotary_dim;
  return r;
}

TEST(GpuRopeTest, ScaledAndPartialVariantsMatchCpu) {
  SKIP_WITHOUT_GPU();
  // T = 3000 > original_max_position (64): every band of llama3 (kept, interpolated, divided) is
  // exercised at positions far past its wavelength.
  const Tensor x = rnd({1, 3000, 3, 64}, 50), dy = rnd({1, 3000, 3, 64}, 51);
  RopeConfig linear;
  linear.theta = 1e6;
  linear.scaling.type = RopeScalingType::kLinear;
  linear.scaling.factor = 4.0;
  RopeConfig partial;
  partial.rotary_dim = 32;
  const std::vector<std::pair<std::string, RopeConfig>> cases = {
      {"llama3", llama3(0)},
      {"llama3 + partial 0.5", llama3(32)},
      {"linear", linear},
      {"partial 0.25", RopeConfig(10000.0, {}, 16)},
      {"partial 0.5", partial}};
  for (const auto& [name, rope] : cases) {
    Tensor y = Tensor::empty(x.shape(), DType::kF32), dx = Tensor::empty(x.shape(), DType::kF32);
    rope_forward(x, rope, y);
    rope_backward(dy, rope, dx);
    Tensor gy = Tensor::empty(x.shape(), DType::kBF16, Device::kCUDA);
    gy.fill_(std::nan(""));  // every element, the pass-through ones too, must be written
    rope_forward(gpu_bf16(x), rope, gy);
    Tensor gdx = gpu_bf16(dy);
    rope_backward(gdx, rope, gdx);  // in place, as the attention block does
    EXPECT_LT(max_scaled_diff(host(gy), y), kBf16Tol) << name;
    EXPECT_LT(max_scaled_diff(host(gdx), dx), kBf16Tol) << name;
  }
}

// Context parallelism rotates a shard whose first token sits at position p0 > 0: the rotation of
// tokens [p0, p0 + n) of a sequence equals rotating the shard alone with position_offset p0, on
// the GPU as on the CPU (which is checked against the whole sequence first, so the offset cannot
// be ignored by both sides alike).
TEST(GpuRopeTest, PositionOffsetMatchesCpuAndTheWholeSequence) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 1024, p0 = 768, n = T - p0;
  const Tensor x = rnd({2, T, 3, 64}, 52);
  for (const RopeConfig& rope : {llama3(0), RopeConfig(10000.0, {}, 32)}) {
    Tensor whole = Tensor::empty(x.shape(), DType::kF32);
    rope_forward(x, rope, whole);
    // The shard's tokens of both batch rows: [2, n, 3, 64].
    Tensor shard = Tensor::empty({2, n, 3, 64}, DType::kF32);
    Tensor want = Tensor::empty({2, n, 3, 64}, DType::kF32);
    for (int64_t b = 0; b < 2; ++b) {
      shard.slice0(b, b + 1).copy_from(x.slice0(b, b + 1).view({T, 3, 64}).slice0(p0, T).view(
          {1, n, 3, 64}));
      want.slice0(b, b + 1).copy_from(whole.slice0(b, b + 1).view({T, 3, 64}).slice0(p0, T).view(
          {1, n, 3, 64}));
    }
    Tensor y = Tensor::empty(shard.shape(), DType::kF32), back = Tensor::empty(shard.shape(), DType::kF32);
    rope_forward(shard, rope, y, p0);
    EXPECT_LT(max_scaled_diff(y, want), 1e-6);
    rope_backward(y, rope, back, p0);  // the inverse rotation at the same positions
    EXPECT_LT(max_scaled_diff(back, shard), 1e-5);

    Tensor gy = gpu_nan(shard.shape());
    rope_forward(gpu_bf16(shard), rope, gy, p0);
    EXPECT_LT(max_scaled_diff(host(gy), y), kBf16Tol);
    Tensor gdx = gpu_bf16(shard);
    rope_backward(gdx, rope, gdx, p0);
    Tensor dx = Tensor::empty(shard.shape(), DType::kF32);
    rope_backward(shard, rope, dx, p0);
    EXPECT_LT(max_scaled_diff(host(gdx), dx), kBf16Tol);
    // And not the rotation at position 0.
    Tensor y0 = Tensor::empty(shard.shape(), DType::kF32);
    rope_forward(shard, rope, y0);
    EXPECT_GT(max_scaled_diff(host(gy), y0), 0.1);
  }
}

TEST(GpuRopeTest, ModelWithLlama3AndPartialRotaryMatchesCpu) {
  SKIP_WITHOUT_GPU();
  ModelConfig c;
  c.vocab_size = 512;
  c.d_model = 256;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  c.ffn_dim = 512;
  c.rope_theta = 500000.0;
  c.rope_scaling = llama3(0).scaling;
  c.rotary_dim = 16;
  c.attention = {AttentionKind::kDense, AttentionKind::kMsa};
  c.msa.block_size = 16;
  c.msa.topk = 4;
  c.msa.index_dim = 32;
  ASSERT_TRUE(c.validate().ok()) << c.validate();
  Transformer cpu(c, DType::kF32, Device::kCPU), gpu(c, DType::kBF16, Device::kCUDA);
  cpu.params().initialize(7);
  for (Parameter& p : cpu.params().all()) {
    const Tensor rounded = p.value.to(DType::kBF16);
    p.value.copy_from(rounded.to(DType::kF32));
    gpu.params().at(p.spec.name).value.copy_from(rounded.to(Device::kCUDA));
  }
  const int64_t B = 2, T = 160;
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (int64_t i = 0; i < B * T; ++i) {
    tok[i] = static_cast<int32_t>((i * 7919 + 13) % c.vocab_size);
    tgt[i] = static_cast<int32_t>((i * 104729 + 5) % c.vocab_size);
  }
  const Tensor tokens = Tensor::from_vector<int32_t>({B, T}, tok),
               targets = Tensor::from_vector<int32_t>({B, T}, tgt);
  ForwardOptions opt;
  const ForwardResult rc = cpu.forward(tokens, targets, opt);
  const ForwardResult rg = gpu.forward(tokens.to(Device::kCUDA), targets.to(Device::kCUDA), opt);
  EXPECT_NEAR(rg.lm_loss, rc.lm_loss, 1e-2 * rc.lm_loss);
  cpu.backward(1.0);
  gpu.backward(1.0);
  double worst = 0;
  std::string worst_name;
  for (const Parameter& p : cpu.params().all()) {
    const std::vector<double> g = host(gpu.params().at(p.spec.name).grad).to_double_vector(),
                              r = p.grad.to_double_vector();
    double num = 0, den = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      num += (g[i] - r[i]) * (g[i] - r[i]);
      den += r[i] * r[i];
    }
    const double e = std::isnan(num) ? INFINITY : std::sqrt(num / std::max(den, 1e-30));
    if (e > worst) worst = e, worst_name = p.spec.name;
  }
  EXPECT_LT(worst, 5e-2) << "worst gradient: " << worst_name;
  std::printf("llama3 + partial rotary: loss cpu %.6f gpu %.6f; worst gradient rel. L2 %.4f (%s)\n",
              rc.lm_loss, rg.lm_loss, worst, worst_name.c_str());
}

}  // namespace
}  // namespace msa
