// The CUDA MSA kernels against the CPU reference on random inputs (fresh seeds each case, never
// zeros): block pooling, top-k selection (identical for f32 inputs, ties included), sparse
// attention forward and backward in f32 (1e-4) and bf16 (bf16 tolerance), the k >= n_b identity
// with dense attention, and the index loss on device tensors. Skips without a CUDA device.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/msa.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

using test::max_scaled_diff;
using test::random_tensor;

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

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
Tensor host(const Tensor& t) { return t.to(Device::kCPU).to(DType::kF32); }
// Rounds to bf16 and back, so the CPU reference sees exactly the GPU's inputs.
Tensor bf16_rounded(const Tensor& t) { return t.to(DType::kBF16).to(DType::kF32); }

// Integers in [-spread, spread] (f32): index scores of such vectors are exact in any summation
// order, so selections must agree bit for bit, ties included.
Tensor small_integers(const Shape& s, uint64_t seed, int spread) {
  Tensor t = Tensor::empty(s, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<float>()[i] = static_cast<float>(
        static_cast<int>(philox4x32(seed, i).v[0] % (2 * spread + 1)) - spread);
  return t;
}

TEST(GpuMsaTest, BlockPoolingMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : kCases) {
    const int64_t nb = msa_num_blocks(c.T, c.B);
    Tensor ik = random_tensor({c.batch, c.T, c.G, c.dI}, 1000 + c.T, DType::kF32);
    Tensor kbar = Tensor::empty({c.batch, nb, c.G, c.dI}, DType::kF32);
    msa_block_pool_forward(ik, c.B, kbar);
    Tensor kbar_gpu = Tensor::empty(kbar.shape(), DType::kF32, Device::kCUDA);
    msa_block_pool_forward(dev(ik, DType::kF32), c.B, kbar_gpu);
    EXPECT_EQ(host(kbar_gpu).to_double_vector(), kbar.to_double_vector());
    Tensor dkbar = random_tensor(kbar.shape(), 1100 + c.T, DType::kF32);
    Tensor dik = Tensor::empty(ik.shape(), DType::kF32);
    msa_block_pool_backward(dkbar, c.B, dik);
    Tensor dik_gpu = Tensor::empty(ik.shape(), DType::kF32, Device::kCUDA);
    msa_block_pool_backward(dev(dkbar, DType::kF32), c.B, dik_gpu);
    EXPECT_LT(max_scaled_diff(host(dik_gpu), dik), 1e-6);
  }
}

void expect_same_selection(const Tensor& iq, const Tensor& kbar, const Case& c) {
  BlockSelection cpu = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
  msa_index_topk(iq, kbar, cpu);
  BlockSelection gpu = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCUDA);
  msa_index_topk(dev(iq, DType::kF32), dev(kbar, DType::kF32), gpu);
  const std::vector<double> a = cpu.indices.to_double_vector(),
                            b = gpu.indices.to(Device::kCPU).to_double_vector();
  int64_t mismatches = 0;
  for (size_t i = 0; i < a.size(); ++i) mismatches += a[i] != b[i];
  EXPECT_EQ(mismatches, 0) << "of " << a.size() << " selection entries";
  EXPECT_EQ(gpu.counts.to(Device::kCPU).to_double_vector(), cpu.counts.to_double_vector());
}

TEST(GpuMsaTest, TopkSelectionIdenticalToCpuForF32) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 2000;
  for (const Case& c : kCases) {
    const int64_t nb = msa_num_blocks(c.T, c.B);
    const Tensor iq = random_tensor({c.batch, c.T, c.G, c.dI}, seed++, DType::kF32);
    const Tensor kbar = random_tensor({c.batch, nb, c.G, c.dI}, seed++, DType::kF32);
    expect_same_selection(iq, kbar, c);
    // Small integers: many exact ties, which must go to the lower block on both.
    const Tensor int_iq = small_integers({c.batch, c.T, c.G, c.dI}, seed++, 1);
    const Tensor int_kbar = small_integers({c.batch, nb, c.G, c.dI}, seed++, 1);
    expect_same_selection(int_iq, int_kbar, c);
  }
}

// The tensor-core top-k (bf16 index vectors, as the model runs on the GPU), with several
// shared-memory stages of block keys and both list lengths (topk <= 16 and <= 32): with
// integer-valued inputs every score is exact, so the selection must equal the CPU's bit for bit,
// ties included; with random inputs the scores of the selected blocks must equal the CPU's up to
// f32 summation order (near-ties may swap).
TEST(GpuMsaTest, TopkTensorCoreBf16MatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<Case> cases = {{1, 20000, 4, 2, 64, 64, 16, 16},
                                   {2, 3000, 4, 2, 64, 32, 16, 20},
                                   {1, 4500, 2, 1, 64, 128, 32, 7},
                                   {1, 777, 2, 2, 64, 16, 8, 1}};
  uint64_t seed = 9900;
  for (const Case& c : cases) {
    const int64_t nb = msa_num_blocks(c.T, c.B);
    const std::string what = "T=" + std::to_string(c.T) + " dI=" + std::to_string(c.dI) +
                             " B=" + std::to_string(c.B) + " k=" + std::to_string(c.K);
    for (bool integer : {true, false}) {
      const Tensor iq = integer ? small_integers({c.batch, c.T, c.G, c.dI}, seed++, 2)
                                : bf16_rounded(random_tensor({c.batch, c.T, c.G, c.dI}, seed++,
                                                             DType::kF32));
      const Tensor kbar = integer ? small_integers({c.batch, nb, c.G, c.dI}, seed++, 2)
                                  : bf16_rounded(random_tensor({c.batch, nb, c.G, c.dI}, seed++,
                                                               DType::kF32));
      BlockSelection cpu = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
      msa_index_topk(iq, kbar, cpu);
      BlockSelection gpu = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCUDA);
      gpu.indices.fill_(7.0);  // poison: every entry must be written
      gpu.counts.fill_(0.0);
      msa_index_topk(dev(iq, DType::kBF16), dev(kbar, DType::kBF16), gpu);
      const Tensor gi = gpu.indices.to(Device::kCPU), gc = gpu.counts.to(Device::kCPU);
      EXPECT_EQ(gc.to_double_vector(), cpu.counts.to_double_vector()) << what;
      const int32_t* a = cpu.indices.data<int32_t>();
      const int32_t* g = gi.data<int32_t>();
      if (integer) {
        int64_t mismatches = 0;
        for (int64_t i = 0; i < gi.numel(); ++i) mismatches += a[i] != g[i];
        EXPECT_EQ(mismatches, 0) << "integer inputs " << what;
        continue;
      }
      // Random inputs: compare the sorted scores of the two selections row by row.
      const float* q = iq.data<float>();
      const float* kb = kbar.data<float>();
      int64_t bad = 0, differing = 0;
      for (int64_t row = 0; row < c.batch * c.T * c.G; ++row) {
        const int64_t g_ = row % c.G, b_ = row / (c.T * c.G);
        auto score = [&](int32_t j) {
          double s = 0;
          for (int e = 0; e < c.dI; ++e)
            s += double(q[row * c.dI + e]) * kb[((b_ * nb + j) * c.G + g_) * c.dI + e];
          return s;
        };
        std::vector<double> sa, sg;
        bool same = true;
        for (int i = 0; i < c.K; ++i) {
          same = same && a[row * c.K + i] == g[row * c.K + i];
          if (a[row * c.K + i] >= 0) sa.push_back(score(a[row * c.K + i]));
          if (g[row * c.K + i] >= 0) sg.push_back(score(g[row * c.K + i]));
        }
        differing += !same;
        std::sort(sa.begin(), sa.end());
        std::sort(sg.begin(), sg.end());
        if (sa.size() != sg.size()) {
          ++bad;
          continue;
        }
        for (size_t i = 0; i < sa.size(); ++i) bad += std::abs(sa[i] - sg[i]) > 1e-4;
      }
      EXPECT_EQ(bad, 0) << "rows whose selected scores differ beyond rounding, " << what;
      EXPECT_LT(differing, c.batch * c.T * c.G / 100) << "rows differing at all, " << what;
    }
  }
}

struct AttnResult {
  Tensor out, lse, dq, dk, dv;
};

AttnResult run_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                         const BlockSelection& sel, double scale) {
  const Device device = q.device();
  const DType stat = device == Device::kCUDA ? DType::kF32 : q.dtype();
  AttnResult r;
  r.out = Tensor::empty(q.shape(), q.dtype(), device);
  r.lse = Tensor::empty({q.size(0), q.size(2), q.size(1)}, stat, device);
  msa_sparse_attention_forward(q, k, v, sel, scale, r.out, r.lse);
  r.dq = Tensor::empty(q.shape(), q.dtype(), device);
  r.dk = Tensor::empty(k.shape(), k.dtype(), device);
  r.dv = Tensor::empty(v.shape(), v.dtype(), device);
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
    Tensor kbar = random_tensor({c.batch, nb, c.G, c.dI}, seed++, DType::kF32);
    BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
    msa_index_topk(iq, kbar, sel);
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

TEST(GpuMsaTest, IndexLossOnDeviceTensorsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case c = kCases[0];
  const int64_t nb = msa_num_blocks(c.T, c.B);
  Tensor iq = random_tensor({c.batch, c.T, c.G, c.dI}, 5001, DType::kF32);
  Tensor kbar = random_tensor({c.batch, nb, c.G, c.dI}, 5002, DType::kF32);
  Tensor q = random_tensor({c.batch, c.T, c.H, c.d}, 5003, DType::kF32);
  Tensor k = random_tensor({c.batch, c.T, c.G, c.d}, 5004, DType::kF32);
  Tensor v = random_tensor({c.batch, c.T, c.G, c.d}, 5005, DType::kF32);
  BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
  msa_index_topk(iq, kbar, sel);
  Tensor out = Tensor::empty(q.shape(), DType::kF32),
         lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
  msa_sparse_attention_forward(q, k, v, sel, 0.125, out, lse);
  Tensor diq = Tensor::empty(iq.shape(), DType::kF32),
         dkbar = Tensor::empty(kbar.shape(), DType::kF32);
  const IndexLossResult ref =
      msa_index_loss(IndexLossMode::kSparse, q, k, lse, sel, iq, kbar, 0.125, c.B, 1.0, diq, dkbar);
  BlockSelection gsel = sel;
  gsel.indices = sel.indices.to(Device::kCUDA);
  gsel.counts = sel.counts.to(Device::kCUDA);
  Tensor gdiq = Tensor::empty(iq.shape(), DType::kF32, Device::kCUDA);
  Tensor gdkbar = Tensor::empty(kbar.shape(), DType::kF32, Device::kCUDA);
  const IndexLossResult got = msa_index_loss(
      IndexLossMode::kSparse, dev(q, DType::kF32), dev(k, DType::kF32), dev(lse, DType::kF32), gsel,
      dev(iq, DType::kF32), dev(kbar, DType::kF32), 0.125, c.B, 1.0, gdiq, gdkbar);
  EXPECT_EQ(got.n_rows, ref.n_rows);
  EXPECT_NEAR(got.loss, ref.loss, 1e-6 * std::max(1.0, ref.loss));
  EXPECT_LT(max_scaled_diff(host(gdiq), diq), 1e-6);
  EXPECT_LT(max_scaled_diff(host(gdkbar), dkbar), 1e-6);
}

// The dense-target loss (index warm-up, dense-attention phase) on the GPU: block masses from the
// tensor-core dense pass, then P, Q, KL and the gradients, against the CPU reference on the same
// bf16-valued inputs and the same dense lse; r = 4, 1 and 8, several head dims and block sizes.
TEST(GpuMsaTest, DenseTargetIndexLossOnTensorCoresMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<Case> cases = {{2, 700, 8, 2, 32, 32, 64, 4},
                                   {1, 1000, 8, 8, 64, 16, 16, 4},
                                   {1, 600, 16, 2, 128, 64, 32, 4}};
  uint64_t seed = 9700;
  for (const Case& c : cases) {
    const std::string what = "T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) + " G=" +
                             std::to_string(c.G) + " d=" + std::to_string(c.d) +
                             " B=" + std::to_string(c.B);
    const int64_t nb = msa_num_blocks(c.T, c.B);
    auto rnd = [&](const Shape& s) { return bf16_rounded(random_tensor(s, seed++, DType::kF32)); };
    const Tensor q = rnd({c.batch, c.T, c.H, c.d}), k = rnd({c.batch, c.T, c.G, c.d}),
                 v = rnd({c.batch, c.T, c.G, c.d});
    const Tensor iq = rnd({c.batch, c.T, c.G, c.dI}), kbar = rnd({c.batch, nb, c.G, c.dI});
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    Tensor out = Tensor::empty(q.shape(), DType::kF32),
           lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
    attention_forward(q, k, v, scale, out, lse);
    Tensor diq = Tensor::empty(iq.shape(), DType::kF32),
           dkbar = Tensor::empty(kbar.shape(), DType::kF32);
    const IndexLossResult ref = msa_index_loss(IndexLossMode::kDenseTarget, q, k, lse,
                                               BlockSelection(), iq, kbar, scale, c.B, 0.7, diq,
                                               dkbar);
    Tensor gdiq = Tensor::empty(iq.shape(), DType::kF32, Device::kCUDA);
    Tensor gdkbar = Tensor::empty(kbar.shape(), DType::kF32, Device::kCUDA);
    gdiq.fill_(std::nan(""));
    gdkbar.fill_(std::nan(""));
    const IndexLossResult got = msa_index_loss(
        IndexLossMode::kDenseTarget, dev(q, DType::kBF16), dev(k, DType::kBF16),
        dev(lse, DType::kF32), BlockSelection(), dev(iq, DType::kBF16), dev(kbar, DType::kBF16),
        scale, c.B, 0.7, gdiq, gdkbar);
    EXPECT_EQ(got.n_rows, ref.n_rows) << what;
    EXPECT_GT(ref.loss, 0.01) << what;  // a real distribution gap, not a vacuous zero
    EXPECT_NEAR(got.loss, ref.loss, 1e-3 * std::max(1.0, ref.loss)) << what;
    EXPECT_LT(max_scaled_diff(host(gdiq), diq), 1e-3) << "diq " << what;
    EXPECT_LT(max_scaled_diff(host(gdkbar), dkbar), 1e-3) << "dkbar " << what;
  }
}

// The GPU training path's index loss: the sparse forward's block masses (checked against a
// direct sum over each block's attended keys) feed msa_index_loss_from_mass, which must equal the
// CPU reference msa_index_loss(kSparse) in f32, and stay within bf16 tolerance for bf16 inputs.
TEST(GpuMsaTest, IndexLossFromForwardBlockMassMatchesCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 7001;
  for (const Case& c : kCases) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const int64_t nb = msa_num_blocks(c.T, c.B);
      // Inputs rounded to dt, so both sides see the same values.
      auto rnd = [&](const Shape& s) {
        return random_tensor(s, seed++, DType::kF32).to(dt).to(DType::kF32);
      };
      Tensor iq = rnd({c.batch, c.T, c.G, c.dI}), kbar = rnd({c.batch, nb, c.G, c.dI});
      Tensor q = rnd({c.batch, c.T, c.H, c.d}), k = rnd({c.batch, c.T, c.G, c.d});
      Tensor v = rnd({c.batch, c.T, c.G, c.d});
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
      BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
      msa_index_topk(iq, kbar, sel);
      Tensor out = Tensor::empty(q.shape(), DType::kF32),
             lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
      msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
      Tensor diq = Tensor::empty(iq.shape(), DType::kF32),
             dkbar = Tensor::empty(kbar.shape(), DType::kF32);
      const IndexLossResult ref = msa_index_loss(IndexLossMode::kSparse, q, k, lse, sel, iq, kbar,
                                                 scale, c.B, 1.7, diq, dkbar);

      BlockSelection gsel = sel;
      gsel.indices = sel.indices.to(Device::kCUDA);
      gsel.counts = sel.counts.to(Device::kCUDA);
      Tensor gout = Tensor::empty(q.shape(), dt, Device::kCUDA);
      Tensor glse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      Tensor mass = Tensor::empty({c.batch, c.T, c.H, c.K}, DType::kF32, Device::kCUDA);
      mass.fill_(std::nan(""));
      msa_sparse_attention_forward(dev(q, dt), dev(k, dt), dev(v, dt), gsel, scale, gout, glse,
                                   mass);
      // The masses against a direct evaluation from the CPU's lse.
      const Tensor hm = host(mass);
      const float* qp = q.data<float>();
      const float* kp = k.data<float>();
      const int32_t* ip = sel.indices.data<int32_t>();
      const int32_t* cp = sel.counts.data<int32_t>();
      double worst = 0;
      const int64_t r = c.H / c.G;
      for (int64_t b = 0; b < c.batch; ++b)
        for (int64_t t = 0; t < c.T; t += 7)
          for (int64_t h = 0; h < c.H; ++h) {
            const int64_t g = h / r, row = (b * c.T + t) * c.G + g;
            const double L = lse.data<float>()[(b * c.H + h) * c.T + t];
            for (int i = 0; i < c.K; ++i) {
              double want = 0;
              if (i < cp[row]) {
                const int64_t j = ip[row * c.K + i];
                for (int64_t s = j * c.B; s < std::min<int64_t>((j + 1) * c.B, t + 1); ++s) {
                  double dot = 0;
                  for (int64_t e = 0; e < c.d; ++e)
                    dot += static_cast<double>(qp[((b * c.T + t) * c.H + h) * c.d + e]) *
                           kp[((b * c.T + s) * c.G + g) * c.d + e];
                  want += std::exp(scale * dot - L);
                }
              }
              const double got = hm.data<float>()[((b * c.T + t) * c.H + h) * c.K + i];
              worst = std::max(worst, std::abs(got - want));
            }
          }
      const double tol = dt == DType::kF32 ? 1e-4 : 2e-2;
      EXPECT_LT(worst, tol) << "block mass, " << dtype_name(dt);

      Tensor gdiq = Tensor::empty(iq.shape(), DType::kF32, Device::kCUDA);
      Tensor gdkbar = Tensor::empty(kbar.shape(), DType::kF32, Device::kCUDA);
      gdiq.fill_(std::nan(""));
      const IndexLossResult got = msa_index_loss_from_mass(mass, gsel, dev(iq, dt), dev(kbar, dt),
                                                           c.B, 1.7, gdiq, gdkbar);
      EXPECT_EQ(got.n_rows, ref.n_rows);
      EXPECT_NEAR(got.loss, ref.loss, tol * std::max(1.0, ref.loss)) << dtype_name(dt);
      EXPECT_LT(max_scaled_diff(host(gdiq), diq), tol) << "diq " << dtype_name(dt);
      EXPECT_LT(max_scaled_diff(host(gdkbar), dkbar), tol) << "dkbar " << dtype_name(dt);
    }
  }
}

// A non-finite index branch (a diverging run: NaN or -inf scores) must still give a valid
// selection: block indices in range, distinct, ascending, the local block last; never a sentinel
// index that would send the attention's work lists out of bounds.
TEST(GpuMsaTest, TopkTensorCoreWithNonFiniteScoresStaysInRange) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 3000, G = 2, dI = 64;
  const int B = 64, K = 16;
  const int64_t nb = msa_num_blocks(T, B);
  Tensor iq = random_tensor({1, T, G, dI}, 9950, DType::kF32);
  const Tensor kbar = random_tensor({1, nb, G, dI}, 9951, DType::kF32);
  float* x = iq.data<float>();
  for (int64_t t = 0; t < T; t += 7) x[(t * G) * dI] = std::nan("");   // NaN rows (group 0)
  for (int64_t t = 3; t < T; t += 7) x[(t * G + 1) * dI] = -INFINITY;  // -inf/NaN mixes (group 1)
  BlockSelection gpu = BlockSelection::allocate(1, T, G, B, K, Device::kCUDA);
  msa_index_topk(dev(iq, DType::kBF16), dev(kbar, DType::kBF16), gpu);
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
// against the CPU reference: output, LSE, the per-block masses and dQ/dK/dV, with one and several
// query chunks, and against the first-generation CUDA kernels on the same inputs.
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
                                   {1, 1300, 32, 2, 128, 32, 128, 6}};
  uint64_t seed = 9100;
  for (const Case& c : cases) {
    for (const char* chunk : {"", "128"}) {
      if (*chunk) setenv("MSA_KV_OUTER_CHUNK", chunk, 1);
      auto rnd = [&](const Shape& s) {
        return random_tensor(s, seed++, DType::kF32).to(DType::kBF16).to(DType::kF32);
      };
      const int64_t nb = msa_num_blocks(c.T, c.B);
      Tensor q = rnd({c.batch, c.T, c.H, c.d}), k = rnd({c.batch, c.T, c.G, c.d});
      Tensor v = rnd({c.batch, c.T, c.G, c.d});
      Tensor iq = random_tensor({c.batch, c.T, c.G, c.dI}, seed++, DType::kF32);
      Tensor kbar = random_tensor({c.batch, nb, c.G, c.dI}, seed++, DType::kF32);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
      BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
      msa_index_topk(iq, kbar, sel);
      Tensor out = Tensor::empty(q.shape(), DType::kF32),
             lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
      msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
      BlockSelection gsel = sel;
      gsel.indices = sel.indices.to(Device::kCUDA);
      gsel.counts = sel.counts.to(Device::kCUDA);
      Tensor gout = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      Tensor glse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      Tensor mass = Tensor::empty({c.batch, c.T, c.H, c.K}, DType::kF32, Device::kCUDA);
      gout.fill_(std::nan(""));
      glse.fill_(std::nan(""));
      mass.fill_(std::nan(""));
      const Tensor gq = dev(q, DType::kBF16), gk = dev(k, DType::kBF16),
                   gv = dev(v, DType::kBF16);
      msa_sparse_attention_forward(gq, gk, gv, gsel, scale, gout, glse, mass);
      const std::string what = "T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
                               " G=" + std::to_string(c.G) + " d=" + std::to_string(c.d) +
                               " B=" + std::to_string(c.B) + " chunk=" + chunk;
      EXPECT_LT(max_scaled_diff(host(gout), out), 2e-2) << "out " << what;
      if (!*chunk)
        std::printf("%s out: scaled max error vs CPU %.4f, rel. L2 %.5f\n", what.c_str(),
                    max_scaled_diff(host(gout), out), rel_l2_f32(host(gout), out));
      EXPECT_LT(max_scaled_diff(host(glse), lse), 1e-3) << "lse " << what;
      // Masses of each row sum to 1 over its slots (every attended key lies in one slot).
      const Tensor hm = host(mass);
      double worst_sum = 0;
      for (int64_t row = 0; row < c.batch * c.T * c.H; ++row) {
        double total = 0;
        for (int i = 0; i < c.K; ++i) total += hm.data<float>()[row * c.K + i];
        worst_sum = std::max(worst_sum, std::abs(total - 1.0));
      }
      EXPECT_LT(worst_sum, 1e-3) << "mass sums " << what;
      // Same inputs through the first-generation kernel.
      setenv("MSA_SPARSE_ATTENTION", "reference", 1);
      Tensor rout = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      Tensor rlse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      Tensor rmass = Tensor::empty(mass.shape(), DType::kF32, Device::kCUDA);
      msa_sparse_attention_forward(gq, gk, gv, gsel, scale, rout, rlse, rmass);
      unsetenv("MSA_SPARSE_ATTENTION");
      EXPECT_LT(max_scaled_diff(host(gout), host(rout)), 2e-2) << "vs reference kernel " << what;
      EXPECT_LT(max_scaled_diff(hm, host(rmass)), 1e-2) << "mass vs reference kernel " << what;
      // And through the mma.sync KV-outer forward (on Hopper, d 128 / B 128 run wgmma above).
      setenv("MSA_KV_OUTER_WGMMA", "0", 1);
      Tensor sout = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      Tensor slse = Tensor::empty(lse.shape(), DType::kF32, Device::kCUDA);
      msa_sparse_attention_forward(gq, gk, gv, gsel, scale, sout, slse);
      unsetenv("MSA_KV_OUTER_WGMMA");
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
        if (reference) setenv("MSA_SPARSE_ATTENTION", "reference", 1);
        std::vector<Tensor> g = {Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA),
                                 Tensor::empty(k.shape(), DType::kBF16, Device::kCUDA),
                                 Tensor::empty(v.shape(), DType::kBF16, Device::kCUDA)};
        for (Tensor& x : g) x.fill_(std::nan(""));
        msa_sparse_attention_backward(gdout, gq, gk, gv, gout, glse, gsel, scale, g[0], g[1],
                                      g[2]);
        unsetenv("MSA_SPARSE_ATTENTION");
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
      unsetenv("MSA_KV_OUTER_CHUNK");
    }
  }
}

// The Hopper wgmma kernels (head_dim 128, block 128) against the mma.sync KV-outer kernels on
// the same device inputs, forward and backward, at a size small enough for compute-sanitizer's
// racecheck (scripts/gpu_session.sh sanitize). On other GPUs both runs take the mma.sync path.
TEST(GpuMsaTest, WgmmaKernelsMatchMmaSync) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 600, H = 8, G = 2, d = 128, dI = 32;
  const int B = 128, K = 3;
  const int64_t nb = msa_num_blocks(T, B);
  uint64_t seed = 9400;
  auto rnd = [&](const Shape& s) { return random_tensor(s, seed++, DType::kF32); };
  const Tensor gq = dev(rnd({1, T, H, d}), DType::kBF16), gk = dev(rnd({1, T, G, d}), DType::kBF16),
               gv = dev(rnd({1, T, G, d}), DType::kBF16), gdout = dev(rnd({1, T, H, d}), DType::kBF16);
  Tensor iq = rnd({1, T, G, dI}), kbar = rnd({1, nb, G, dI});
  BlockSelection sel = BlockSelection::allocate(1, T, G, B, K, Device::kCPU);
  msa_index_topk(iq, kbar, sel);
  sel.indices = sel.indices.to(Device::kCUDA);
  sel.counts = sel.counts.to(Device::kCUDA);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto run = [&](bool wgmma) {
    if (!wgmma) setenv("MSA_KV_OUTER_WGMMA", "0", 1);
    std::vector<Tensor> r = {Tensor::empty(gq.shape(), DType::kBF16, Device::kCUDA),
                             Tensor::empty({1, H, T}, DType::kF32, Device::kCUDA),
                             Tensor::empty(gq.shape(), DType::kBF16, Device::kCUDA),
                             Tensor::empty(gk.shape(), DType::kBF16, Device::kCUDA),
                             Tensor::empty(gv.shape(), DType::kBF16, Device::kCUDA)};
    for (Tensor& x : r) x.fill_(std::nan(""));
    msa_sparse_attention_forward(gq, gk, gv, sel, scale, r[0], r[1]);
    msa_sparse_attention_backward(gdout, gq, gk, gv, r[0], r[1], sel, scale, r[2], r[3], r[4]);
    unsetenv("MSA_KV_OUTER_WGMMA");
    return r;
  };
  const std::vector<Tensor> fast = run(true), ref = run(false);
  const char* names[5] = {"out", "lse", "dq", "dk", "dv"};
  const double tol[5] = {2e-2, 1e-4, 3e-2, 3e-2, 3e-2};
  for (int i = 0; i < 5; ++i)
    EXPECT_LT(max_scaled_diff(host(fast[i]), host(ref[i])), tol[i]) << names[i];
}

}  // namespace
}  // namespace msa
