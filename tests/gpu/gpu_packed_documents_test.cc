// Packed documents on the GPU (msa-train --pack_documents, model/segmented_kernels.h): the whole
// model (bf16 CUDA) on a packed batch against the CPU (f32) on the same packed batch: losses and
// every parameter's gradient, dense, MSA sparse and warm-up, and the product's shape (head_dim,
// block and d_I 128; cuDNN and the wgmma kernels). The CPU packed batch equals its documents run
// separately exactly (tests/model/model_packed_documents_test.cc), so this pins the CUDA kernels on
// document views: offsets into the activations, the packed lse layout, documents shorter than a
// block. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/transformer.h"
#include "tests/testing/gpu.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h

ModelConfig config(const std::string& kind) {
  ModelConfig c;
  c.vocab_size = 512;
  c.d_model = 256;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  c.ffn_dim = 512;
  if (kind == "msa" || kind == "msa_warmup") {
    c.attention = {AttentionKind::kDense, AttentionKind::kMsa};
    c.msa.block_size = 16;
    c.msa.topk = 4;
    c.msa.index_dim = 32;
  }
  if (kind == "msa128") {
    c.head_dim = 128;
    c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
    c.msa.block_size = 128;
    c.msa.topk = 4;
    c.msa.index_dim = 128;
  }
  return c;
}

// Per row: documents shorter than a block, spanning several blocks (more than top-k for the MSA
// configs: a sparse selection inside the document), and odd starts.
std::vector<std::vector<int64_t>> starts_for(int64_t T) {
  // T = 1024, blocks of 128: 100 < 1 block; 517 and 691 tokens > 4 blocks (sparse).
  if (T == 1024) return {{0, 100, 617}, {0, 333}};
  // T = 96, blocks of 16: 5 < 1 block, 16 = 1 block; 75 and 83 tokens > 4 blocks (sparse).
  return {{0, 5, 21}, {0, 83}};
}

void make_batch(const ModelConfig& c, int64_t T, Tensor& tokens, Tensor& targets) {
  std::vector<int32_t> tok(2 * T), tgt(2 * T);
  uint64_t s = 12345;
  for (auto& x : tok) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<int32_t>((s >> 33) % c.vocab_size);
  }
  for (int64_t i = 0; i < 2 * T; ++i)
    tgt[i] = (i + 1) % T == 0 ? kIgnoreIndex : tok[(i + 1) % (2 * T)];
  tokens = Tensor::from_vector<int32_t>({2, T}, tok);
  targets = Tensor::from_vector<int32_t>({2, T}, tgt);
}

// The CPU model's weights rounded to bf16, in both models.
void share_weights(Transformer& cpu, Transformer& gpu) {
  for (Parameter& p : cpu.params().all()) {
    const Tensor rounded = p.value.to(DType::kBF16);
    p.value.copy_from(rounded.to(DType::kF32));
    gpu.params().at(p.spec.name).value.copy_from(rounded.to(Device::kCUDA));
  }
}

std::vector<Tensor> host_grads(Transformer& m) {
  std::vector<Tensor> g;
  // A copy: host() of a CPU f32 tensor is the tensor itself, which the next backward changes.
  for (const Parameter& p : m.params().all()) g.push_back(host(p.grad).clone());
  return g;
}

double worst_rel_l2(Transformer& m, const std::vector<Tensor>& a, const std::vector<Tensor>& b,
                    std::string* where) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = rel_l2(a[i], b[i]);
    if (!(e <= worst)) {
      worst = e;
      *where = m.params().all()[i].spec.name;
    }
  }
  return worst;
}

class GpuPackedDocumentsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuPackedDocumentsTest, LossAndGradientsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const std::string kind = GetParam();
  const ModelConfig c = config(kind);
  const int64_t T = c.head_dim == 128 ? 1024 : 96;
  Transformer cpu(c, DType::kF32, Device::kCPU), gpu(c, DType::kBF16, Device::kCUDA);
  cpu.params().initialize(7);
  share_weights(cpu, gpu);
  Tensor tokens, targets;
  make_batch(c, T, tokens, targets);
  ForwardOptions opt;
  opt.msa_mode = kind == "msa_warmup" ? MsaMode::kDenseWarmup : MsaMode::kSparse;
  opt.recall_query_stride = c.any_msa() ? 7 : 0;

  // The documents ignored, on the CPU: how far packing moves the gradients (the bound below must
  // be well under it, or a GPU that ignored the documents would pass).
  cpu.params().zero_grads();
  const ForwardResult ru = cpu.forward(tokens, targets, opt);
  cpu.backward(1.0);
  const std::vector<Tensor> unpacked = host_grads(cpu);

  opt.documents =
      std::make_shared<const DocumentSegments>(DocumentSegments::from_starts(2, T, starts_for(T)));
  cpu.params().zero_grads();
  const ForwardResult rc = cpu.forward(tokens, targets, opt);
  cpu.backward(1.0);
  const std::vector<Tensor> packed_cpu = host_grads(cpu);
  gpu.params().zero_grads();
  const ForwardResult rg = gpu.forward(tokens.to(Device::kCUDA), targets.to(Device::kCUDA), opt);
  gpu.backward(1.0);
  const std::vector<Tensor> packed_gpu = host_grads(gpu);

  EXPECT_NEAR(rg.lm_loss, rc.lm_loss, 1e-2 * rc.lm_loss);
  EXPECT_NEAR(rg.index_loss, rc.index_loss, 2e-2 * std::max(rc.index_loss, 1e-3));
  ASSERT_EQ(rg.index_recall.size(), rc.index_recall.size());
  for (size_t l = 0; l < rc.index_recall.size(); ++l) {
    EXPECT_NEAR(rg.index_recall[l], rc.index_recall[l], 5e-2) << "layer " << l;
    EXPECT_NEAR(rg.block_recall[l], rc.block_recall[l], 1e-1) << "layer " << l;
  }
  std::string where, where_unpacked;
  const double err = worst_rel_l2(cpu, packed_gpu, packed_cpu, &where);
  const double packing_effect = worst_rel_l2(cpu, unpacked, packed_cpu, &where_unpacked);
  // As GpuModelTest's bounds (tests/gpu/gpu_dense_test.cc): bf16 through two layers; msa128's
  // near-tied block maxima may select other blocks in a few rows of layer 1.
  const double tol = kind == "msa128" ? 1e-1 : 5e-2;
  EXPECT_LT(err, tol) << "worst gradient: " << where;
  EXPECT_GT(packing_effect, 2 * tol) << "packing barely changes the gradients (" << where_unpacked
                                     << "): this test could not tell";
  std::printf(
      "%s packed: loss cpu %.6f gpu %.6f (unpacked cpu %.6f); index loss cpu %.6f gpu %.6f; "
      "worst gradient rel. L2 error %.4f (%s); packing moves gradients by %.3f\n",
      kind.c_str(), rc.lm_loss, rg.lm_loss, ru.lm_loss, rc.index_loss, rg.index_loss, err,
      where.c_str(), packing_effect);
}

INSTANTIATE_TEST_SUITE_P(Configs, GpuPackedDocumentsTest,
                         ::testing::Values("dense", "msa", "msa_warmup", "msa128"));

}  // namespace
}  // namespace msa
