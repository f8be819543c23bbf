// Deterministic mode (core/deterministic.h, msa-train --deterministic) on the GPU: every kernel
// with a deterministic variant gives bit-identical outputs on two calls with the same inputs and
// stays within the existing tolerances of the default path or the CPU reference -- the KV-outer
// sparse attention backward (sorted work lists; mma.sync and, on Hopper at d 128 / B 128, wgmma;
// one and several query chunks), the index distillation loss in both modes (per-slot partials;
// several chunks / several dense launches), the embedding backward (sorted tokens) and the dense
// attention backward (the fallback kernel instead of cuDNN's). Then the whole model: two AdamW
// steps run twice give bit-identical losses, gradients and weights, for dense attention, MSA
// sparse and the MSA dense warm-up, at head_dim 64 and 128. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "core/deterministic.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cuda/msa_cuda.h"
#include "kernels/embedding.h"
#include "kernels/msa.h"
#include "model/transformer.h"
#include "tests/testing/gpu.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/scoped_env.h"
#include "train/optimizer.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h and gradcheck.h

using test::max_scaled_diff;
using test::random_tensor;

// Bit-for-bit equality of two tensors (any device, same dtype and shape), every value finite: two
// outputs left NaN-poisoned (never written) are bytewise equal and must not pass.
::testing::AssertionResult bit_identical(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::kCPU), y = b.to(Device::kCPU);
  if (x.dtype() != y.dtype() || x.shape() != y.shape())
    return ::testing::AssertionFailure() << x.describe() << " vs " << y.describe();
  const std::vector<double> values = x.to(DType::kF32).to_double_vector();
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]))
      return ::testing::AssertionFailure()
             << "element " << i << " of " << values.size() << " is " << values[i];
  const unsigned char* p = static_cast<const unsigned char*>(x.raw_data());
  const unsigned char* q = static_cast<const unsigned char*>(y.raw_data());
  const size_t n = x.nbytes(), es = dtype_size(x.dtype());
  for (size_t i = 0; i < n; ++i)
    if (p[i] != q[i])
      return ::testing::AssertionFailure()
             << "first difference at element " << i / es << " of " << n / es << ": "
             << x.to(DType::kF32).to_double_vector()[i / es] << " vs "
             << y.to(DType::kF32).to_double_vector()[i / es];
  return ::testing::AssertionSuccess();
}

struct SparseCase {
  int64_t batch, T, H, G, d, dI;
  int B, K;
};

std::string describe(const SparseCase& c) {
  return "batch=" + std::to_string(c.batch) + " T=" + std::to_string(c.T) +
         " H=" + std::to_string(c.H) + " G=" + std::to_string(c.G) + " d=" + std::to_string(c.d) +
         " dI=" + std::to_string(c.dI) + " B=" + std::to_string(c.B) + " k=" + std::to_string(c.K);
}

// Cases with k < n_b (truly sparse) and several lists per block: d 128 / B 128 runs the wgmma
// backward on Hopper, the others the mma.sync one.
const std::vector<SparseCase> kSparseCases = {{1, 1100, 8, 2, 128, 128, 128, 3},
                                              {2, 600, 8, 2, 64, 64, 64, 4},
                                              {1, 700, 16, 4, 128, 32, 64, 5}};

struct SparseInputs {
  Tensor q, k, v, dout, iq, ik;  // device, bf16
  BlockSelection sel;            // device
  double scale;
};

SparseInputs sparse_inputs(const SparseCase& c, uint64_t seed) {
  SparseInputs in;
  in.q = gpu_bf16(rnd({c.batch, c.T, c.H, c.d}, seed));
  in.k = gpu_bf16(rnd({c.batch, c.T, c.G, c.d}, seed + 1));
  in.v = gpu_bf16(rnd({c.batch, c.T, c.G, c.d}, seed + 2));
  in.dout = gpu_bf16(rnd({c.batch, c.T, c.H, c.d}, seed + 3));
  const Tensor iq = rnd({c.batch, c.T, c.G, c.dI}, seed + 4),
               ik = rnd({c.batch, c.T, c.dI}, seed + 5);
  in.iq = gpu_bf16(iq);
  in.ik = gpu_bf16(ik);
  in.sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
  msa_index_topk(iq, ik, in.sel);  // on the CPU: the same selection for every run
  in.sel.indices = in.sel.indices.to(Device::kCUDA);
  in.sel.counts = in.sel.counts.to(Device::kCUDA);
  in.scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  return in;
}

// ---- kernels ----------------------------------------------------------------------------------

TEST(GpuDeterministicTest, SparseAttentionBackwardIsBitIdenticalAndMatchesDefault) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 12000;
  for (const SparseCase& c : kSparseCases) {
    for (const char* chunk : {"", "128"}) {
      const ScopedEnv env("MSA_KV_OUTER_CHUNK", chunk);
      const SparseInputs in = sparse_inputs(c, seed);
      seed += 10;
      Tensor out = gpu_nan(in.q.shape()), lse = gpu_nan({c.batch, c.H, c.T}, DType::kF32);
      msa_sparse_attention_forward(in.q, in.k, in.v, in.sel, in.scale, out, lse);
      auto grads = [&](bool det) {
        const ScopedDeterministic mode(det);
        std::vector<Tensor> g = {gpu_nan(in.q.shape()), gpu_nan(in.k.shape()),
                                 gpu_nan(in.v.shape())};
        msa_sparse_attention_backward(in.dout, in.q, in.k, in.v, out, lse, in.sel, in.scale, g[0],
                                      g[1], g[2]);
        return g;
      };
      const std::vector<Tensor> a = grads(true), b = grads(true), ref = grads(false);
      const std::string what = describe(c) + " chunk=" + chunk;
      const char* names[3] = {"dq", "dk", "dv"};
      for (int i = 0; i < 3; ++i) {
        EXPECT_TRUE(bit_identical(a[i], b[i])) << names[i] << " " << what;
        // Another summation order of the same f32 sums, rounded to bf16: a few bf16 ulps.
        EXPECT_LT(max_scaled_diff(host(a[i]), host(ref[i])), 1e-2) << names[i] << " " << what;
      }
    }
  }
}

// The work lists the forward keeps in the selection's cache and the recomputed forward and the
// backward reuse: the same results as lists built afresh (bit for bit where the order of the sums
// is fixed: the forward always, the backward in deterministic mode; a few bf16 ulps otherwise),
// in both modes, with one and several query chunks. Rewriting the selection (msa_index_topk)
// drops them: the next forward follows the new selection, not the old lists.
TEST(GpuDeterministicTest, CachedWorkListsGiveTheSameResults) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 12500;
  for (const SparseCase& c : kSparseCases) {
    for (const char* chunk : {"", "128"}) {
      const ScopedEnv env("MSA_KV_OUTER_CHUNK", chunk);
      const SparseInputs in = sparse_inputs(c, seed);
      seed += 10;
      for (bool det : {false, true}) {
        const ScopedDeterministic mode(det);
        const std::string what = describe(c) + " chunk=" + chunk + " det=" + std::to_string(det);
        BlockSelection cached = in.sel;  // its own buffers: msa_index_topk rewrites them below
        cached.indices = in.sel.indices.clone();
        cached.counts = in.sel.counts.clone();
        cached.cache = std::make_shared<SelectionCache>();
        BlockSelection fresh = cached;
        fresh.cache = nullptr;
        auto forward = [&](const BlockSelection& sel) {
          std::vector<Tensor> r = {gpu_nan(in.q.shape()), gpu_nan({c.batch, c.H, c.T}, DType::kF32)};
          msa_sparse_attention_forward(in.q, in.k, in.v, sel, in.scale, r[0], r[1]);
          return r;
        };
        auto backward = [&](const BlockSelection& sel, const std::vector<Tensor>& fwd) {
          std::vector<Tensor> g = {gpu_nan(in.q.shape()), gpu_nan(in.k.shape()),
                                   gpu_nan(in.v.shape())};
          msa_sparse_attention_backward(in.dout, in.q, in.k, in.v, fwd[0], fwd[1], sel, in.scale,
                                        g[0], g[1], g[2]);
          return g;
        };
        const std::vector<Tensor> f1 = forward(cached);
        EXPECT_GT(cached.cache->bytes(), 0) << "nothing cached, " << what;
        const std::vector<Tensor> f2 = forward(cached), f0 = forward(fresh);
        for (int i = 0; i < 2; ++i) {
          EXPECT_TRUE(bit_identical(f1[i], f2[i])) << "forward again, " << what;
          EXPECT_TRUE(bit_identical(f1[i], f0[i])) << "forward uncached, " << what;
        }
        const std::vector<Tensor> g1 = backward(cached, f1), g0 = backward(fresh, f0);
        const char* names[3] = {"dq", "dk", "dv"};
        for (int i = 0; i < 3; ++i) {
          if (det) {
            EXPECT_TRUE(bit_identical(g1[i], g0[i])) << names[i] << " " << what;
          }
          EXPECT_LT(max_scaled_diff(host(g1[i]), host(g0[i])), 1e-2) << names[i] << " " << what;
        }
        // The index loss reads the forward's lists, taking the attention's query chunks: the
        // same loss and gradients as from lists of its own (bit for bit in deterministic mode
        // when its own chunk is the same: with MSA_KV_OUTER_CHUNK it has more chunks, whose dik
        // sums run in another order).
        auto index_loss = [&](const BlockSelection& sel, const std::vector<Tensor>& fwd) {
          std::vector<Tensor> g = {gpu_nan(in.iq.shape(), DType::kF32),
                                   gpu_nan(in.ik.shape(), DType::kF32)};
          const IndexLossResult r = msa_index_loss(IndexLossMode::kSparse, in.q, in.k, fwd[1], sel,
                                                   in.iq, in.ik, in.scale, 1.0, g[0], g[1]);
          g.push_back(Tensor::from_vector<double>({1}, {r.loss}));
          return g;
        };
        const std::vector<Tensor> l1 = index_loss(cached, f1), l0 = index_loss(fresh, f0);
        for (int i = 0; i < 3; ++i) {
          if (det && std::strlen(chunk) == 0) {
            EXPECT_TRUE(bit_identical(l1[i], l0[i])) << "index loss " << i << " " << what;
          }
          // On the gradients' own scale (O(1e-4): a floor of 1 passed zeros and sign flips),
          // and not zero on both sides.
          EXPECT_LT(max_diff_over_max(host(l1[i]), host(l0[i])), 1e-4)
              << "index loss " << i << " " << what;
          double largest = 0;
          for (double x : host(l0[i]).to_double_vector()) largest = std::max(largest, std::abs(x));
          EXPECT_GT(largest, 0) << "index loss " << i << " " << what << " is all zero";
        }
        // A new selection in the same buffers: the cache is cleared and not used stale.
        const Tensor iq2 = gpu_bf16(rnd({c.batch, c.T, c.G, c.dI}, seed++));
        msa_index_topk(iq2, in.ik, cached);
        EXPECT_EQ(cached.cache->bytes(), 0) << what;
        BlockSelection fresh2 = cached;
        fresh2.cache = nullptr;
        const std::vector<Tensor> f3 = forward(cached), f4 = forward(fresh2);
        EXPECT_TRUE(bit_identical(f3[0], f4[0])) << "forward after a new selection, " << what;
        EXPECT_FALSE(bit_identical(f3[0], f1[0])) << "the new selection changed nothing, " << what;
      }
    }
  }
}

TEST(GpuDeterministicTest, IndexLossIsBitIdenticalAndMatchesDefault) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 13000;
  for (const SparseCase& c : kSparseCases) {
    const SparseInputs in = sparse_inputs(c, seed);
    seed += 10;
    for (IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
      const bool sparse = mode == IndexLossMode::kSparse;
      // The teacher's lse: the main branch's over the same support.
      Tensor out = gpu_nan(in.q.shape()), lse = gpu_nan({c.batch, c.H, c.T}, DType::kF32);
      if (sparse)
        msa_sparse_attention_forward(in.q, in.k, in.v, in.sel, in.scale, out, lse);
      else
        attention_forward(in.q, in.k, in.v, in.scale, out, lse);
      // Sparse: one and several query chunks; dense: one launch and one key block per launch.
      for (const char* split : {"", "1"}) {
        const ScopedEnv chunk_env("MSA_INDEX_LOSS_CHUNK", sparse && *split ? "200" : "");
        const ScopedEnv blocks_env("MSA_INDEX_LOSS_DET_BLOCKS", !sparse ? split : "");
        auto run = [&](bool det, double& loss) {
          const ScopedDeterministic scoped(det);
          std::vector<Tensor> g = {gpu_nan({c.batch, c.T, c.G, c.dI}, DType::kF32),
                                   gpu_nan({c.batch, c.T, c.dI}, DType::kF32)};
          loss =
              msa_index_loss(mode, in.q, in.k, lse, in.sel, in.iq, in.ik, in.scale, 1.0, g[0], g[1])
                  .loss;
          return g;
        };
        double la = 0, lb = 0, lref = 0;
        const std::vector<Tensor> a = run(true, la), b = run(true, lb), ref = run(false, lref);
        const std::string what =
            describe(c) + (sparse ? " sparse" : " dense") + (*split ? " split" : "");
        EXPECT_EQ(la, lb) << what;
        EXPECT_NEAR(la, lref, 1e-5 * std::max(1.0, std::abs(lref))) << what;
        const char* names[2] = {"diq", "dik"};
        for (int i = 0; i < 2; ++i) {
          EXPECT_TRUE(bit_identical(a[i], b[i])) << names[i] << " " << what;
          // f32 sums in another order: relative differences of order 1e-6.
          EXPECT_LT(rel_l2(host(a[i]), host(ref[i])), 1e-4) << names[i] << " " << what;
        }
      }
    }
  }
}

// Sequences sharing launches (the KV-outer attention and the sparse index loss launch a batch of
// whole sequences together; MSA_KV_OUTER_SEQS caps how many) change which CTA does what, not what
// is summed in which order: in deterministic mode, one sequence per launch, launches of two and
// the whole batch in one give bit-identical outputs, lse, dQ/dK/dV, index losses and diq/dik.
TEST(GpuDeterministicTest, SequencesSharingALaunchGiveBitIdenticalResults) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 13500;
  for (const SparseCase& c :
       {SparseCase{3, 600, 8, 2, 64, 64, 64, 4}, SparseCase{3, 700, 8, 2, 128, 128, 128, 3}}) {
    const SparseInputs in = sparse_inputs(c, seed);
    seed += 10;
    const ScopedDeterministic det(true);
    // Everything one grouping produces, in a fresh selection (no lists cached by another run).
    auto run = [&](const char* seqs) {
      const ScopedEnv env("MSA_KV_OUTER_SEQS", seqs);
      BlockSelection sel = in.sel;
      sel.cache = std::make_shared<SelectionCache>();
      std::vector<Tensor> r = {gpu_nan(in.q.shape()),
                               gpu_nan({c.batch, c.H, c.T}, DType::kF32),
                               gpu_nan(in.q.shape()),
                               gpu_nan(in.k.shape()),
                               gpu_nan(in.v.shape()),
                               gpu_nan({c.batch, c.T, c.G, c.dI}, DType::kF32),
                               gpu_nan({c.batch, c.T, c.dI}, DType::kF32)};
      msa_sparse_attention_forward(in.q, in.k, in.v, sel, in.scale, r[0], r[1]);
      msa_sparse_attention_backward(in.dout, in.q, in.k, in.v, r[0], r[1], sel, in.scale, r[2],
                                    r[3], r[4]);
      const double loss = msa_index_loss(IndexLossMode::kSparse, in.q, in.k, r[1], sel, in.iq,
                                         in.ik, in.scale, 1.0, r[5], r[6])
                              .loss;
      r.push_back(Tensor::from_vector(Shape{1}, std::vector<double>{loss}));
      return r;
    };
    const cpu::MsaDims dims{c.batch, c.T, c.H, c.G, c.d, c.dI, c.B, c.K};
    ASSERT_EQ(cuda::kv_outer_sequences_per_launch(dims), 3) << "the batch must share a launch";
    {
      const ScopedEnv env("MSA_KV_OUTER_SEQS", "2");
      ASSERT_EQ(cuda::kv_outer_sequences_per_launch(dims), 2);
    }
    const std::vector<Tensor> one = run("1");
    const char* names[8] = {"out", "lse", "dq", "dk", "dv", "diq", "dik", "index loss"};
    for (const char* seqs : {"2", ""}) {
      const std::vector<Tensor> other = run(seqs);
      for (int i = 0; i < 8; ++i)
        EXPECT_TRUE(bit_identical(one[i], other[i]))
            << names[i] << " " << describe(c) << ": 1 vs " << (*seqs ? seqs : "all")
            << " sequences per launch";
    }
    ASSERT_TRUE(std::isfinite(one[7].to_double_vector()[0]));
    // And deterministic mode computes what the default mode does (within bf16 and f32 summation
    // order), so the groupings above did not agree on something wrong.
    const ScopedDeterministic nondet(false);
    const std::vector<Tensor> fast = run("");
    for (int i = 0; i < 8; ++i)
      EXPECT_LT(max_diff_over_max(one[i].to(Device::kCPU).to(DType::kF32),
                                  fast[i].to(Device::kCPU).to(DType::kF32)),
                3e-2)
          << names[i] << " " << describe(c) << ": deterministic vs default mode";
  }
}

TEST(GpuDeterministicTest, EmbeddingBackwardIsBitIdenticalAndMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t V = 50, D = 96, N = 8192;  // every token ~160 times: atomics would collide
  std::vector<int32_t> ids(N);
  for (int64_t i = 0; i < N; ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % V);
  const Tensor tokens = Tensor::from_vector<int32_t>({N}, ids);
  const Tensor dout = rnd({N, D}, 14001), dt0 = random_tensor({V, D}, 14002, DType::kF32);
  // The whole table, and a vocabulary slice [10, 40) that some tokens fall outside of.
  for (const auto& [v0, rows] : std::vector<std::pair<int64_t, int64_t>>{{0, V}, {10, 30}}) {
    const Tensor start = dt0.slice0(0, rows).clone();
    Tensor ref = start.clone();
    embedding_backward(dout, tokens, v0, ref);
    auto run = [&] {
      const ScopedDeterministic mode(true);
      Tensor g = gpu_f32(start);
      embedding_backward(gpu_bf16(dout), tokens.to(Device::kCUDA), v0, g);
      return g;
    };
    const Tensor a = run(), b = run();
    EXPECT_TRUE(bit_identical(a, b)) << "vocab_begin " << v0;
    EXPECT_LT(rel_l2(host(a), ref), 1e-6) << "vocab_begin " << v0;
  }
}

TEST(GpuDeterministicTest, DenseAttentionBackwardIsBitIdenticalAndMatchesCudnn) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 15000;
  for (int64_t d : {64, 128}) {
    const int64_t batch = 2, T = 600, H = 8, G = 2;
    const Tensor q = gpu_bf16(rnd({batch, T, H, d}, seed++)),
                 k = gpu_bf16(rnd({batch, T, G, d}, seed++));
    const Tensor v = gpu_bf16(rnd({batch, T, G, d}, seed++)),
                 dout = gpu_bf16(rnd(q.shape(), seed++));
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    Tensor out = gpu_nan(q.shape()), lse = gpu_nan({batch, H, T}, DType::kF32);
    attention_forward(q, k, v, scale, out, lse);
    auto grads = [&](bool det) {
      const ScopedDeterministic mode(det);
      std::vector<Tensor> g = {gpu_nan(q.shape()), gpu_nan(k.shape()), gpu_nan(v.shape())};
      attention_backward(dout, q, k, v, out, lse, scale, g[0], g[1], g[2]);
      return g;
    };
    const std::vector<Tensor> a = grads(true), b = grads(true), ref = grads(false);
    const char* names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(bit_identical(a[i], b[i])) << names[i] << " d=" << d;
      EXPECT_LT(rel_l2(host(a[i]), host(ref[i])), 2 * kBf16Tol) << names[i] << " d=" << d;
    }
  }
}

// ---- whole model ------------------------------------------------------------------------------

struct ModelCase {
  std::string kind;  // dense, sparse (MSA sparse attention) or warmup (MSA dense warm-up)
  int head_dim;
};

std::ostream& operator<<(std::ostream& os, const ModelCase& m) {
  return os << m.kind << " head_dim " << m.head_dim;
}

std::string model_case_name(const ::testing::TestParamInfo<ModelCase>& info) {
  return info.param.kind + std::to_string(info.param.head_dim);
}

// Small models whose MSA layers select k < n_b blocks: head_dim 128 with block 128 and d_I 128
// (the wgmma kernels on Hopper) at T 1024; head_dim 64 with block 64 at T 512.
ModelConfig model_config(const ModelCase& m) {
  ModelConfig c;
  c.vocab_size = 512;
  c.d_model = 256;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = m.head_dim;
  c.ffn_dim = 512;
  if (m.kind != "dense") {
    c.attention = {AttentionKind::kDense, AttentionKind::kMsa};
    c.msa.block_size = m.head_dim;
    c.msa.topk = 3;
    c.msa.index_dim = m.head_dim;
  }
  return c;
}

struct TrainedState {
  std::vector<double> losses;
  std::vector<Tensor> values, grads;  // every parameter after the second step, host copies
};

// Two AdamW steps on fresh batches from a fixed model initialization, in deterministic mode.
TrainedState two_steps(const ModelCase& m) {
  const ScopedDeterministic mode(true);
  const ModelConfig c = model_config(m);
  Transformer model(c, DType::kBF16, Device::kCUDA);
  model.params().initialize(21);
  AdamW opt(model.params(), OptimizerConfig{});
  ForwardOptions fo;
  fo.msa_mode = m.kind == "warmup" ? MsaMode::kDenseWarmup : MsaMode::kSparse;
  const int64_t batch = 2, T = m.head_dim == 128 ? 1024 : 512;
  TrainedState s;
  for (int step = 1; step <= 2; ++step) {
    std::vector<int32_t> tok(batch * T), tgt(batch * T);
    uint64_t r = 0x9e3779b97f4a7c15ull * step;
    for (auto& x : tok) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      x = static_cast<int32_t>((r >> 33) % c.vocab_size);
    }
    for (int64_t i = 0; i < batch * T; ++i) tgt[i] = i % T == T - 1 ? kIgnoreIndex : tok[i + 1];
    const Tensor tokens = Tensor::from_vector<int32_t>({batch, T}, tok).to(Device::kCUDA);
    const Tensor targets = Tensor::from_vector<int32_t>({batch, T}, tgt).to(Device::kCUDA);
    model.params().zero_grads();
    const ForwardResult res = model.forward(tokens, targets, fo);
    model.backward(1.0);
    const double norm = opt.grad_norm();
    opt.step(step, 1e-3, norm);
    s.losses.push_back(res.lm_loss);
    s.losses.push_back(res.index_loss);
    s.losses.push_back(norm);
  }
  for (const Parameter& p : model.params().all()) {
    s.values.push_back(p.value.to(Device::kCPU));
    s.grads.push_back(p.grad.to(Device::kCPU));
  }
  return s;
}

class GpuDeterministicModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(GpuDeterministicModelTest, TwoStepsTwiceAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  const TrainedState a = two_steps(GetParam()), b = two_steps(GetParam());
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    EXPECT_TRUE(std::isfinite(a.losses[i])) << "value " << i;
    EXPECT_EQ(a.losses[i], b.losses[i])
        << "step " << i / 3 + 1 << " value " << i % 3 << " (lm loss, index loss, gradient norm)";
  }
  if (GetParam().kind != "dense") {
    EXPECT_GT(a.losses[1], 0.0) << "the index loss must run";
  }
  ASSERT_EQ(a.values.size(), b.values.size());
  for (size_t i = 0; i < a.values.size(); ++i) {
    EXPECT_TRUE(bit_identical(a.values[i], b.values[i])) << "value of parameter " << i;
    EXPECT_TRUE(bit_identical(a.grads[i], b.grads[i])) << "gradient of parameter " << i;
  }
  std::printf("%s head_dim %d: losses %.9f %.9f, index losses %.9f %.9f\n", GetParam().kind.c_str(),
              GetParam().head_dim, a.losses[0], a.losses[3], a.losses[1], a.losses[4]);
}

INSTANTIATE_TEST_SUITE_P(Configs, GpuDeterministicModelTest,
                         ::testing::Values(ModelCase{"dense", 64}, ModelCase{"dense", 128},
                                           ModelCase{"sparse", 64}, ModelCase{"sparse", 128},
                                           ModelCase{"warmup", 64}, ModelCase{"warmup", 128}),
                         model_case_name);

}  // namespace
}  // namespace msa
