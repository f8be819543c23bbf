// The CUDA MSA kernels against the CPU reference on random inputs (fresh seeds each case, never
// zeros): sparse attention forward and backward in f32 (1e-4) and bf16 (bf16 tolerance), the
// k >= n_b identity with dense attention, the KV-outer and wgmma kernels, and a selection that
// stays valid under non-finite index scores; every path with fewer queries than keys (the query
// offset of context parallelism). The indexer's own tests are in
// gpu_msa_indexer_test.cc, the index loss's in gpu_msa_index_loss_test.cc. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cuda/kernel_dispatch.h"
#include "kernels/cuda/msa_cuda.h"
#include "kernels/msa.h"
#include "tests/testing/gpu.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/scoped_env.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h and gradcheck.h

using test::max_scaled_diff;
using test::random_tensor;

struct Case {
  int64_t batch, T, H, G, d, dI;
  int B, K;
};

const std::vector<Case> kCases = {{1, 300, 8, 2, 64, 32, 16, 4},
                                  {2, 257, 4, 4, 128, 64, 32, 3},
                                  {1, 200, 6, 2, 32, 16, 8, 30}};  // k >= n_b

Tensor dev(const Tensor& t, DType dtype) { return t.to(dtype).to(Device::kCUDA); }
double rel_l2_f32(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.data<float>()[i], y = b.data<float>()[i];
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num / std::max(den, 1e-30));
}
// Rounds to bf16 and back, so the CPU reference sees exactly the GPU's inputs.
Tensor bf16_rounded(const Tensor& t) { return t.to(DType::kBF16).to(DType::kF32); }

struct AttnResult {
  Tensor out, lse, dq, dk, dv;
};

AttnResult run_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                         const BlockSelection& sel, double scale) {
  const Device device = q.device();
  const DType stat = device == Device::kCUDA ? DType::kF32 : q.dtype();
  // NaN-poisoned on the GPU: every element must be written (dK, dV of unselected keys too).
  auto out = [&](const Shape& shape, DType dtype) {
    Tensor t = Tensor::empty(shape, dtype, device);
    if (device == Device::kCUDA) t.fill_(std::nan(""));
    return t;
  };
  AttnResult r;
  r.out = out(q.shape(), q.dtype());
  r.lse = out({q.size(0), q.size(2), q.size(1)}, stat);
  msa_sparse_attention_forward(q, k, v, sel, scale, r.out, r.lse);
  r.dq = out(q.shape(), q.dtype());
  r.dk = out(k.shape(), k.dtype());
  r.dv = out(v.shape(), v.dtype());
  msa_sparse_attention_backward(dout, q, k, v, r.out, r.lse, sel, scale, r.dq, r.dk, r.dv);
  return r;
}

void check_attention(DType dtype, double tol) {
  uint64_t seed = dtype == DType::kF32 ? 3000 : 4000;
  for (const Case& c : kCases) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " H=" << c.H << " G=" << c.G << " d=" << c.d
                                    << " k=" << c.K << " " << dtype_name(dtype));
    const int64_t nb = msa_num_blocks(c.T, c.B);
    Tensor iq = random_tensor({c.batch, c.T, c.G, c.dI}, seed++, DType::kF32);
    Tensor ik = random_tensor({c.batch, c.T, c.dI}, seed++, DType::kF32);
    BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
    msa_index_topk(iq, ik, sel);
    BlockSelection gsel = sel;
    gsel.indices = sel.indices.to(Device::kCUDA);
    gsel.counts = sel.counts.to(Device::kCUDA);
    auto input = [&](const Shape& s) {
      Tensor t = random_tensor(s, seed++, DType::kF32);
      return dtype == DType::kBF16 ? bf16_rounded(t) : t;
    };
    Tensor q = input({c.batch, c.T, c.H, c.d}), k = input({c.batch, c.T, c.G, c.d}),
           v = input({c.batch, c.T, c.G, c.d}), dout = input({c.batch, c.T, c.H, c.d});
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    AttnResult ref = run_attention(q, k, v, dout, sel, scale);
    AttnResult gpu =
        run_attention(dev(q, dtype), dev(k, dtype), dev(v, dtype), dev(dout, dtype), gsel, scale);
    EXPECT_LT(max_scaled_diff(host(gpu.out), ref.out), tol) << "out";
    EXPECT_LT(max_scaled_diff(host(gpu.lse), ref.lse), tol) << "lse";
    EXPECT_LT(max_scaled_diff(host(gpu.dq), ref.dq), tol) << "dq";
    EXPECT_LT(max_scaled_diff(host(gpu.dk), ref.dk), tol) << "dk";
    EXPECT_LT(max_scaled_diff(host(gpu.dv), ref.dv), tol) << "dv";
    if (c.K >= nb) {  // every block selected: dense attention
      Tensor out = Tensor::empty(q.shape(), DType::kF32),
             lse = Tensor::empty(ref.lse.shape(), DType::kF32);
      attention_forward(q, k, v, scale, out, lse);
      EXPECT_LT(max_scaled_diff(host(gpu.out), out), tol) << "identity with dense attention";
    }
  }
}

TEST(GpuMsaTest, SparseAttentionF32MatchesCpu) {
  SKIP_WITHOUT_GPU();
  check_attention(DType::kF32, 1e-4);
}

TEST(GpuMsaTest, SparseAttentionBf16WithinBf16Tolerance) {
  SKIP_WITHOUT_GPU();
  // Inputs are bf16-exact; the outputs are rounded to bf16 (relative step 2^-8 = 3.9e-3).
  check_attention(DType::kBF16, 1e-2);
}

// A non-finite index branch (a diverging run: NaN or -inf scores) must still give a valid
// selection: block indices in range, distinct, ascending, the local block last; never a sentinel
// index that would send the attention's work lists out of bounds.
TEST(GpuMsaTest, TopkTensorCoreWithNonFiniteScoresStaysInRange) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 3000, G = 2, dI = 64;
  const int B = 64, K = 16;
  Tensor iq = random_tensor({1, T, G, dI}, 9950, DType::kF32);
  const Tensor ik = random_tensor({1, T, dI}, 9951, DType::kF32);
  float* x = iq.data<float>();
  for (int64_t t = 0; t < T; t += 7) x[(t * G) * dI] = std::nan("");   // NaN rows (group 0)
  for (int64_t t = 3; t < T; t += 7) x[(t * G + 1) * dI] = -INFINITY;  // -inf/NaN mixes (group 1)
  BlockSelection gpu = BlockSelection::allocate(1, T, G, B, K, Device::kCUDA);
  msa_index_topk(dev(iq, DType::kBF16), dev(ik, DType::kBF16), gpu);
  const Tensor gi = gpu.indices.to(Device::kCPU), gc = gpu.counts.to(Device::kCPU);
  int64_t bad = 0;
  for (int64_t row = 0; row < T * G; ++row) {
    const int64_t t = row / G, c = t / B;
    const int count = gc.data<int32_t>()[row];
    const int32_t* ix = gi.data<int32_t>() + row * K;
    bool ok = count == std::min<int64_t>(K - 1, c) + 1 && ix[count - 1] == c;
    for (int i = 0; i + 1 < count; ++i) ok = ok && ix[i] >= 0 && ix[i] < ix[i + 1];
    bad += ok ? 0 : 1;
  }
  EXPECT_EQ(bad, 0) << "rows with an invalid selection";
}

// The tensor-core KV-outer forward and backward (bf16; head_dim 64/128, B 64/128, r = 1..8)
// against the CPU reference: output, LSE and dQ/dK/dV, with one and several query chunks, the
// batch's sequences in one launch (the default at these sizes) and in launches of at most two
// (MSA_KV_OUTER_SEQS=2: with batch 3, a launch of two and one of one), and against the
// first-generation CUDA kernels on the same inputs.
TEST(GpuMsaTest, KvOuterTensorCoreForwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<Case> cases = {{2, 700, 8, 2, 128, 32, 64, 4},
                                   {1, 1000, 8, 8, 64, 32, 128, 3},
                                   {1, 777, 16, 2, 128, 16, 128, 5},
                                   {1, 640, 4, 2, 64, 16, 64, 16},  // k >= n_b: dense
                                   // head_dim 128, B 128, r = 4: the wgmma forward on Hopper
                                   {1, 2100, 16, 4, 128, 32, 128, 8},
                                   {2, 384, 8, 2, 128, 32, 128, 2},
                                   // the wgmma kernels at r = 1, 2 and 16, k up to 32
                                   {1, 1000, 4, 4, 128, 32, 128, 32},
                                   {1, 900, 4, 2, 128, 32, 128, 5},
                                   {1, 1300, 32, 2, 128, 32, 128, 6},
                                   // batch 3: launches of several sequences
                                   {3, 520, 8, 2, 64, 32, 64, 4},
                                   {3, 640, 16, 4, 128, 32, 128, 4}};
  uint64_t seed = 9100;
  for (const Case& c : cases) {
    // Environment of the run: "" (defaults), "128" (128-query chunks), "seqs2".
    for (const char* chunk : {"", "128", "seqs2"}) {
      const bool seqs2 = std::strcmp(chunk, "seqs2") == 0;
      if (seqs2 && c.batch < 3) continue;
      const ScopedEnv seqs_env("MSA_KV_OUTER_SEQS", seqs2 ? "2" : nullptr);
      const ScopedEnv chunk_env("MSA_KV_OUTER_CHUNK", seqs2 ? nullptr : chunk);
      auto rnd = [&](const Shape& s) {
        return random_tensor(s, seed++, DType::kF32).to(DType::kBF16).to(DType::kF32);
      };
      Tensor q = rnd({c.batch, c.T, c.H, c.d}), k = rnd({c.batch, c.T, c.G, c.d});
      Tensor v = rnd({c.batch, c.T, c.G, c.d});
      Tensor iq = random_tensor({c.batch, c.T, c.G, c.dI}, seed++, DType::kF32);
      Tensor ik = random_tensor({c.batch, c.T, c.dI}, seed++, DType::kF32);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
      BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
      msa_index_topk(iq, ik, sel);
      Tensor out = Tensor::empty(q.shape(), DType::kF32),
             lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
      msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
      BlockSelection gsel = sel;
      gsel.indices = sel.indices.to(Device::kCUDA);
      gsel.counts = sel.counts.to(Device::kCUDA);
      Tensor gout = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      Tensor glse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      // The case is the KV-outer kernels' (a narrowed support check would run the
      // first-generation kernels, and the comparison with them below would prove nothing).
      ASSERT_TRUE(cuda::kv_outer_attention_supported(
          gout, cpu::MsaDims{c.batch, c.T, c.H, c.G, c.d, c.dI, c.B, c.K}));
      gout.fill_(std::nan(""));
      glse.fill_(std::nan(""));
      const Tensor gq = dev(q, DType::kBF16), gk = dev(k, DType::kBF16),
                   gv = dev(v, DType::kBF16);
      msa_sparse_attention_forward(gq, gk, gv, gsel, scale, gout, glse);
      const std::string what = "T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
                               " G=" + std::to_string(c.G) + " d=" + std::to_string(c.d) +
                               " B=" + std::to_string(c.B) + " chunk=" + chunk;
      EXPECT_LT(max_scaled_diff(host(gout), out), 2e-2) << "out " << what;
      if (!*chunk)
        std::printf("%s out: scaled max error vs CPU %.4f, rel. L2 %.5f\n", what.c_str(),
                    max_scaled_diff(host(gout), out), rel_l2_f32(host(gout), out));
      EXPECT_LT(max_scaled_diff(host(glse), lse), 1e-3) << "lse " << what;
      // Same inputs through the first-generation kernel.
      Tensor rout = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      Tensor rlse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      {
        const ScopedEnv env("MSA_SPARSE_ATTENTION", "reference");
        msa_sparse_attention_forward(gq, gk, gv, gsel, scale, rout, rlse);
      }
      EXPECT_LT(max_scaled_diff(host(gout), host(rout)), 2e-2) << "vs reference kernel " << what;
      // And through the mma.sync KV-outer forward (on Hopper, d 128 / B 128 run wgmma above).
      Tensor sout = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      Tensor slse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      {
        const ScopedEnv env("MSA_KV_OUTER_WGMMA", "0");
        msa_sparse_attention_forward(gq, gk, gv, gsel, scale, sout, slse);
      }
      EXPECT_LT(max_scaled_diff(host(gout), host(sout)), 2e-2) << "vs mma.sync kernel " << what;
      EXPECT_LT(max_scaled_diff(host(glse), host(slse)), 1e-4) << "lse vs mma.sync " << what;

      // Backward: dQ, dK, dV against the CPU (the CPU's own forward output and lse) and against
      // the first-generation kernel.
      const Tensor dout = rnd(q.shape());
      Tensor dq = Tensor::empty(q.shape(), DType::kF32), dk = Tensor::empty(k.shape(), DType::kF32),
             dv = Tensor::empty(v.shape(), DType::kF32);
      msa_sparse_attention_backward(dout, q, k, v, out, lse, sel, scale, dq, dk, dv);
      const Tensor gdout = dev(dout, DType::kBF16);
      auto gpu_grads = [&](bool reference) {
        const ScopedEnv env("MSA_SPARSE_ATTENTION", reference ? "reference" : nullptr);
        std::vector<Tensor> g = {Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA),
                                 Tensor::empty(k.shape(), DType::kBF16, Device::kCUDA),
                                 Tensor::empty(v.shape(), DType::kBF16, Device::kCUDA)};
        for (Tensor& x : g) x.fill_(std::nan(""));
        msa_sparse_attention_backward(gdout, gq, gk, gv, gout, glse, gsel, scale, g[0], g[1], g[2]);
        return g;
      };
      const std::vector<Tensor> fast = gpu_grads(false), slow = gpu_grads(true);
      const Tensor* ref[3] = {&dq, &dk, &dv};
      const char* names[3] = {"dq", "dk", "dv"};
      for (int i = 0; i < 3; ++i) {
        const double e_fast = max_scaled_diff(host(fast[i]), *ref[i]);
        const double e_slow = max_scaled_diff(host(slow[i]), *ref[i]);
        EXPECT_LT(e_fast, 3e-2) << names[i] << " " << what;
        EXPECT_LT(max_scaled_diff(host(fast[i]), host(slow[i])), 3e-2)
            << names[i] << " vs reference kernel " << what;
        if (!*chunk)
          std::printf("%s %s: scaled max error vs CPU: tensor-core %.4f, first-generation %.4f\n",
                      what.c_str(), names[i], e_fast, e_slow);
      }
    }
  }
}

// Every query selects the first k-1 blocks (index scores steered there, as attention sinks or
// facts every query reads make a trained selector do): those lists hold every query of the
// chunk, so the backward splits each over many CTAs that add their dK/dV atomically (the
// mma.sync kernel at head_dim 64, the wgmma one at 128 / B 128 on Hopper, with chunks of 512
// queries too). dQ, dK and dV against the CPU.
TEST(GpuMsaTest, HotListsSplitOverCtasMatchCpu) {
  SKIP_WITHOUT_GPU();
  struct Hot {
    int64_t T, H, G, d;
    int B, K;
  };
  uint64_t seed = 9300;
  for (const Hot& c : {Hot{3000, 8, 2, 64, 64, 4}, Hot{2600, 16, 4, 128, 128, 4}}) {
    auto rnd = [&](const Shape& sh) {
      return random_tensor(sh, seed++, DType::kF32).to(DType::kBF16).to(DType::kF32);
    };
    const Tensor q = rnd({1, c.T, c.H, c.d}), k = rnd({1, c.T, c.G, c.d}),
                 v = rnd({1, c.T, c.G, c.d}), dout = rnd({1, c.T, c.H, c.d});
    const int64_t dI = 16, first_keys = static_cast<int64_t>(c.K - 1) * c.B;
    Tensor iq = random_tensor({1, c.T, c.G, dI}, seed++, DType::kF32);
    Tensor ik = random_tensor({1, c.T, dI}, seed++, DType::kF32);
    for (int64_t i = 0; i < c.T * c.G; ++i) iq.data<float>()[i * dI] = 8.0f;
    for (int64_t s = 0; s < c.T; ++s) ik.data<float>()[s * dI] = s < first_keys ? 8.0f : -8.0f;
    BlockSelection sel = BlockSelection::allocate(1, c.T, c.G, c.B, c.K, Device::kCPU);
    msa_index_topk(iq, ik, sel);
    // The steering worked: the last query's rows hold blocks 0 .. K-2.
    for (int64_t g = 0; g < c.G; ++g)
      ASSERT_EQ(sel.indices.data<int32_t>()[((c.T - 1) * c.G + g) * c.K + c.K - 2], c.K - 2);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    Tensor out = Tensor::empty(q.shape(), DType::kF32),
           lse = Tensor::empty({1, c.H, c.T}, DType::kF32);
    msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
    Tensor dq = Tensor::empty(q.shape(), DType::kF32), dk = Tensor::empty(k.shape(), DType::kF32),
           dv = Tensor::empty(v.shape(), DType::kF32);
    msa_sparse_attention_backward(dout, q, k, v, out, lse, sel, scale, dq, dk, dv);

    ASSERT_TRUE(cuda::kv_outer_attention_supported(
        q.to(DType::kBF16).to(Device::kCUDA), cpu::MsaDims{1, c.T, c.H, c.G, c.d, dI, c.B, c.K}));
    BlockSelection gsel = sel;
    gsel.indices = sel.indices.to(Device::kCUDA);
    gsel.counts = sel.counts.to(Device::kCUDA);
    const Tensor gq = dev(q, DType::kBF16), gk = dev(k, DType::kBF16), gv = dev(v, DType::kBF16),
                 gdout = dev(dout, DType::kBF16);
    for (const char* chunk : {"", "512"}) {
      const ScopedEnv chunk_env("MSA_KV_OUTER_CHUNK", chunk);
      gsel.cache->clear();  // lists of this chunk size
      Tensor gout = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      Tensor glse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      msa_sparse_attention_forward(gq, gk, gv, gsel, scale, gout, glse);
      std::vector<Tensor> g = {Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA),
                               Tensor::empty(k.shape(), DType::kBF16, Device::kCUDA),
                               Tensor::empty(v.shape(), DType::kBF16, Device::kCUDA)};
      for (Tensor& x : g) x.fill_(std::nan(""));
      msa_sparse_attention_backward(gdout, gq, gk, gv, gout, glse, gsel, scale, g[0], g[1], g[2]);
      const Tensor* ref[3] = {&dq, &dk, &dv};
      const char* names[3] = {"dq", "dk", "dv"};
      const std::string what = "T=" + std::to_string(c.T) + " d=" + std::to_string(c.d) +
                               " B=" + std::to_string(c.B) + " chunk=" + chunk;
      for (int i = 0; i < 3; ++i) {
        const double e = max_scaled_diff(host(g[i]), *ref[i]);
        EXPECT_LT(e, 3e-2) << names[i] << " " << what;
        std::printf("hot lists %s %s: scaled max error vs CPU %.4f\n", what.c_str(), names[i], e);
      }
    }
  }
}

// The Hopper wgmma kernels (head_dim 128, block 128) against the mma.sync KV-outer kernels on
// the same device inputs, forward and backward, at a size small enough for compute-sanitizer's
// racecheck (scripts/gpu_session.sh sanitize). On other GPUs both runs take the mma.sync path.
TEST(GpuMsaTest, WgmmaKernelsMatchMmaSync) {
  SKIP_WITHOUT_GPU();
  // Elsewhere both runs take the mma.sync path: a kernel compared with itself proves nothing.
  if (!cuda::sm90a_code_available()) GTEST_SKIP() << "needs a Hopper GPU (sm_90a)";
  const int64_t T = 600, H = 8, G = 2, d = 128, dI = 32;
  const int B = 128, K = 3;
  uint64_t seed = 9400;
  auto rnd = [&](const Shape& s) { return random_tensor(s, seed++, DType::kF32); };
  const Tensor gq = dev(rnd({1, T, H, d}), DType::kBF16), gk = dev(rnd({1, T, G, d}), DType::kBF16),
               gv = dev(rnd({1, T, G, d}), DType::kBF16), gdout = dev(rnd({1, T, H, d}), DType::kBF16);
  Tensor iq = rnd({1, T, G, dI}), ik = rnd({1, T, dI});
  BlockSelection sel = BlockSelection::allocate(1, T, G, B, K, Device::kCPU);
  msa_index_topk(iq, ik, sel);
  sel.indices = sel.indices.to(Device::kCUDA);
  sel.counts = sel.counts.to(Device::kCUDA);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto run = [&](bool wgmma) {
    const ScopedEnv env("MSA_KV_OUTER_WGMMA", wgmma ? nullptr : "0");
    std::vector<Tensor> r = {Tensor::empty(gq.shape(), DType::kBF16, Device::kCUDA),
                             Tensor::empty({1, H, T}, DType::kF32, Device::kCUDA),
                             Tensor::empty(gq.shape(), DType::kBF16, Device::kCUDA),
                             Tensor::empty(gk.shape(), DType::kBF16, Device::kCUDA),
                             Tensor::empty(gv.shape(), DType::kBF16, Device::kCUDA)};
    for (Tensor& x : r) x.fill_(std::nan(""));
    msa_sparse_attention_forward(gq, gk, gv, sel, scale, r[0], r[1]);
    msa_sparse_attention_backward(gdout, gq, gk, gv, r[0], r[1], sel, scale, r[2], r[3], r[4]);
    return r;
  };
  const std::vector<Tensor> fast = run(true), ref = run(false);
  const char* names[5] = {"out", "lse", "dq", "dk", "dv"};
  const double tol[5] = {2e-2, 1e-4, 3e-2, 3e-2, 3e-2};
  for (int i = 0; i < 5; ++i)
    EXPECT_LT(max_scaled_diff(host(fast[i]), host(ref[i])), tol[i]) << names[i];
}

// ---- fewer queries than keys (context parallelism) -------------------------------------------
// Tq queries at key positions Tk - Tq .. Tk - 1 (bottom-right aligned), Tk keys: every kernel
// path against the CPU reference on the same Tq < Tk inputs, out and lse, dq, and dk, dv over all
// Tk keys (NaN-poisoned, so a key left unwritten fails).

struct OffsetCase {
  const char* what;
  int64_t batch, Tq, Tk, H, G, d;
  int B, K;
  DType dtype;
  // Random valid selections that never pick the blocks j % 3 == 1 below every query's local
  // block (their keys get zero gradients) instead of the CPU indexer's selection.
  bool random_selection;
};

// The selection of the case's Tq queries (CPU, blocks counted over the Tk keys): the CPU indexer
// on random index inputs with the same offset, or random rows (distinct earlier blocks outside
// j % 3 == 1 while enough of them exist, ascending, then the local block; min(K, c + 1) of them).
BlockSelection offset_selection(const OffsetCase& c, uint64_t seed) {
  BlockSelection sel = BlockSelection::allocate(c.batch, c.Tq, c.G, c.B, c.K, Device::kCPU);
  if (!c.random_selection) {
    const int64_t dI = 32;
    msa_index_topk(random_tensor({c.batch, c.Tq, c.G, dI}, seed, DType::kF32),
                   random_tensor({c.batch, c.Tk, dI}, seed + 1, DType::kF32), sel);
    return sel;
  }
  std::mt19937_64 gen(seed);
  int32_t* idx = sel.indices.data<int32_t>();
  int32_t* cnt = sel.counts.data<int32_t>();
  const int64_t off = c.Tk - c.Tq;
  for (int64_t row = 0; row < c.batch * c.Tq * c.G; ++row) {
    const int64_t t = (row / c.G) % c.Tq;
    const int32_t local = static_cast<int32_t>((off + t) / c.B);
    const size_t want = static_cast<size_t>(std::min<int64_t>(c.K - 1, local));
    std::vector<int32_t> blocks;
    for (int32_t j = 0; j < local; ++j)
      if (j % 3 != 1) blocks.push_back(j);
    if (blocks.size() < want) {
      blocks.clear();
      for (int32_t j = 0; j < local; ++j) blocks.push_back(j);
    }
    std::shuffle(blocks.begin(), blocks.end(), gen);
    blocks.resize(want);
    std::sort(blocks.begin(), blocks.end());
    blocks.push_back(local);
    for (int i = 0; i < c.K; ++i)
      idx[row * c.K + i] = i < static_cast<int>(blocks.size()) ? blocks[i] : -1;
    cnt[row] = static_cast<int32_t>(blocks.size());
  }
  return sel;
}

// A kernel path: the environment switches that select it.
struct AttentionPath {
  const char* name;
  const char* sparse_attention;  // MSA_SPARSE_ATTENTION
  const char* wgmma;             // MSA_KV_OUTER_WGMMA
  const char* chunk;             // MSA_KV_OUTER_CHUNK
};

void check_query_offset_case(const OffsetCase& c, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << c.what << ": batch " << c.batch << " Tq " << c.Tq << " Tk "
                                  << c.Tk << " H " << c.H << " G " << c.G << " d " << c.d << " B "
                                  << c.B << " k " << c.K << " " << dtype_name(c.dtype));
  ASSERT_LT(c.Tq, c.Tk);
  ASSERT_LT(c.K, msa_num_blocks(c.Tk, c.B)) << "k < n_b: a real selection";
  const BlockSelection sel = offset_selection(c, seed);
  const Tensor q = test::rnd({c.batch, c.Tq, c.H, c.d}, seed + 2),
               k = test::rnd({c.batch, c.Tk, c.G, c.d}, seed + 3),
               v = test::rnd({c.batch, c.Tk, c.G, c.d}, seed + 4),
               dout = test::rnd({c.batch, c.Tq, c.H, c.d}, seed + 5);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  // The CPU reference (f32) on the same inputs.
  Tensor out = Tensor::empty(q.shape(), DType::kF32),
         lse = Tensor::empty({c.batch, c.H, c.Tq}, DType::kF32);
  msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
  Tensor dq = Tensor::empty(q.shape(), DType::kF32), dk = Tensor::empty(k.shape(), DType::kF32),
         dv = Tensor::empty(v.shape(), DType::kF32);
  msa_sparse_attention_backward(dout, q, k, v, out, lse, sel, scale, dq, dk, dv);
  if (c.random_selection) {  // not vacuous: whole keys with no gradient, which the GPU must zero
    int64_t zero_keys = 0;
    const float* x = dk.data<float>();
    for (int64_t key = 0; key < c.batch * c.Tk * c.G; ++key)
      zero_keys += std::all_of(x + key * c.d, x + (key + 1) * c.d, [](float e) { return e == 0; });
    EXPECT_GT(zero_keys, 0) << "keys no query selected";
  }

  BlockSelection gsel = sel;
  gsel.indices = sel.indices.to(Device::kCUDA);
  gsel.counts = sel.counts.to(Device::kCUDA);
  const Tensor gq = dev(q, c.dtype), gk = dev(k, c.dtype), gv = dev(v, c.dtype),
               gdout = dev(dout, c.dtype);
  // f32 always runs the first-generation kernels; bf16 the KV-outer ones (wgmma on Hopper at
  // d 128 / B 128), with one and several query chunks, then the mma.sync and first-generation
  // kernels forced.
  std::vector<AttentionPath> paths;
  if (c.dtype == DType::kF32) {
    paths = {{"first-generation (f32)", nullptr, nullptr, nullptr}};
  } else {
    paths = {{"kv-outer", nullptr, nullptr, nullptr},
             {"kv-outer, 128-query chunks", nullptr, nullptr, "128"}};
    if (c.d == 128 && c.B == 128)
      paths.push_back({"kv-outer mma.sync (MSA_KV_OUTER_WGMMA=0)", nullptr, "0", nullptr});
    paths.push_back(
        {"first-generation (MSA_SPARSE_ATTENTION=reference)", "reference", nullptr, nullptr});
  }
  const bool f32 = c.dtype == DType::kF32;
  const double tol_out = f32 ? 1e-4 : 2e-2, tol_lse = f32 ? 1e-4 : 1e-3,
               tol_grad = f32 ? 1e-4 : 3e-2;
  for (const AttentionPath& path : paths) {
    SCOPED_TRACE(path.name);
    const ScopedEnv sparse("MSA_SPARSE_ATTENTION", path.sparse_attention),
        wgmma("MSA_KV_OUTER_WGMMA", path.wgmma), chunk("MSA_KV_OUTER_CHUNK", path.chunk);
    Tensor gout = gpu_nan(q.shape(), c.dtype), glse = gpu_nan(lse.shape(), DType::kF32);
    msa_sparse_attention_forward(gq, gk, gv, gsel, scale, gout, glse);
    Tensor gdq = gpu_nan(q.shape(), c.dtype), gdk = gpu_nan(k.shape(), c.dtype),
           gdv = gpu_nan(v.shape(), c.dtype);
    msa_sparse_attention_backward(gdout, gq, gk, gv, gout, glse, gsel, scale, gdq, gdk, gdv);
    const double e_out = max_scaled_diff(host(gout), out), e_lse = max_scaled_diff(host(glse), lse),
                 e_dq = max_scaled_diff(host(gdq), dq), e_dk = max_scaled_diff(host(gdk), dk),
                 e_dv = max_scaled_diff(host(gdv), dv);
    EXPECT_LT(e_out, tol_out) << "out";
    EXPECT_LT(e_lse, tol_lse) << "lse";
    EXPECT_LT(e_dq, tol_grad) << "dq";
    EXPECT_LT(e_dk, tol_grad) << "dk (all Tk keys)";
    EXPECT_LT(e_dv, tol_grad) << "dv (all Tk keys)";
    std::printf("%s, %s: scaled max error vs CPU out %.4f lse %.5f dq %.4f dk %.4f dv %.4f\n",
                c.what, path.name, e_out, e_lse, e_dq, e_dk, e_dv);
  }
}

// The product shape (bf16, d 128, B 128, topk 16, r = H / G = 16) with the context-parallel
// offsets (multiples of Tq and of B), n_b > k: the wgmma kernels on Hopper.
TEST(GpuMsaTest, QueryOffsetProductShapeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<OffsetCase> cases = {
      // Tk = 4 Tq: offset 3072 = 24 blocks, n_b 32.
      {"product, Tk = 4 Tq", 2, 1024, 4096, 16, 1, 128, 128, 16, DType::kBF16, false},
      // Tk = 3 Tq with two groups: offset 1536 = 12 blocks, n_b 18.
      {"product G 2, Tk = 3 Tq", 1, 768, 2304, 32, 2, 128, 128, 16, DType::kBF16, false}};
  uint64_t seed = 9600;
  for (const OffsetCase& c : cases) check_query_offset_case(c, seed += 10);
}

// Other head dims, block sizes and group sizes (every mma.sync instantiation), offsets that are
// and are not multiples of B, query counts that are not, a partial last key block.
TEST(GpuMsaTest, QueryOffsetSmallShapesMatchCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<OffsetCase> cases = {
      {"d 64 B 64, Tk = 2 Tq", 2, 320, 640, 8, 2, 64, 64, 4, DType::kBF16, false},
      {"d 64 B 64, offset 477", 2, 300, 777, 4, 2, 64, 64, 5, DType::kBF16, false},
      {"d 128 B 128, offset 1200", 2, 700, 1900, 8, 2, 128, 128, 6, DType::kBF16, false},
      {"d 128 B 64, offset 512", 1, 256, 768, 8, 4, 128, 64, 4, DType::kBF16, false},
      {"d 64 B 128, offset 1000", 1, 300, 1300, 16, 2, 64, 128, 3, DType::kBF16, false}};
  uint64_t seed = 9700;
  for (const OffsetCase& c : cases) check_query_offset_case(c, seed += 10);
}

// Key blocks that no query selected: their dk and dv must come out as zeros on every path.
TEST(GpuMsaTest, QueryOffsetUnselectedKeysGetZeroGradients) {
  SKIP_WITHOUT_GPU();
  const std::vector<OffsetCase> cases = {
      {"unselected blocks, d 64 B 64", 2, 256, 1024, 8, 2, 64, 64, 4, DType::kBF16, true},
      {"unselected blocks, d 128 B 128", 1, 256, 2048, 16, 1, 128, 128, 4, DType::kBF16, true},
      {"unselected blocks, f32", 1, 128, 512, 4, 2, 64, 32, 4, DType::kF32, true}};
  uint64_t seed = 9800;
  for (const OffsetCase& c : cases) check_query_offset_case(c, seed += 10);
}

// f32 inputs run the first-generation kernels: the CPU's result to f32 rounding.
TEST(GpuMsaTest, QueryOffsetF32FirstGenerationKernelsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<OffsetCase> cases = {
      {"f32, offset 333", 2, 200, 533, 6, 2, 32, 16, 5, DType::kF32, false},
      {"f32, Tk = 4 Tq", 1, 256, 1024, 8, 2, 64, 64, 4, DType::kF32, false}};
  uint64_t seed = 9900;
  for (const OffsetCase& c : cases) check_query_offset_case(c, seed += 10);
}

}  // namespace
}  // namespace msa
