// The GPU token-level index distillation loss (kernels/cuda/msa_index_loss_cuda.cu) against the
// CPU reference (kernels/cpu/msa_index_loss.cc, f32) on the same bf16-rounded inputs and the same
// lse, both modes: random inputs (fresh seeds per case, never zeros), random valid selections with
// k < n_b (so the sparse support differs from the dense one), partial last blocks, batch 2, the
// small recipe (H 4, G 2, d = dI = 16, B 16, k 4), odd r and mixed head dims, and product shapes
// (d = dI = 128, B 128, H 32/64, G 4/8). Also: k >= n_b makes the sparse mode equal the dense
// one, forced query chunks change nothing, and the sparse loss is deterministic. Fewer queries
// than keys (a context-parallel shard, query t at position Tk - Tq + t): small and product shapes,
// offsets that are multiples of Tq and B (the cp case) and ones that are not multiples of B,
// selections from the CPU msa_index_topk, diq and dik (all Tk keys) against the CPU reference, in
// the default and the deterministic mode, with one and several query chunks / dense launches.
// Skips without a GPU.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "core/deterministic.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cpu/msa.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cuda/kernel_dispatch.h"
#include "kernels/cuda/msa_cuda.h"
#include "kernels/msa.h"
#include "tests/testing/gpu.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/scoped_env.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h and gradcheck.h

using test::random_tensor;

// T query tokens; Tk key tokens (0: as many as queries), query t then at position Tk - T + t.
struct Case {
  int64_t batch, T, H, G, d, dI;
  int B, K;
  int64_t Tk = 0;
  int64_t keys() const { return Tk > 0 ? Tk : T; }
  int64_t offset() const { return keys() - T; }
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  os << "batch=" << c.batch << " T=" << c.T << " H=" << c.H << " G=" << c.G << " d=" << c.d
     << " dI=" << c.dI << " B=" << c.B << " k=" << c.K;
  if (c.offset() > 0) os << " Tk=" << c.keys() << " offset=" << c.offset();
  return os;
}

cpu::MsaDims dims_of(const Case& c) {
  cpu::MsaDims d{c.batch, c.T, c.H, c.G, c.d, c.dI, c.B, c.K};
  d.kv_seq = c.keys();
  return d;
}

// Random valid selection: per row c(p) (p = offset + t) plus min(k - 1, c(p)) distinct earlier
// blocks, ascending, the local block last; -1 past the count.
BlockSelection random_selection(const Case& c, uint64_t seed) {
  BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
  std::mt19937_64 rng(seed);
  int32_t* idx = sel.indices.data<int32_t>();
  int32_t* cnt = sel.counts.data<int32_t>();
  std::vector<int32_t> pool;
  for (int64_t row = 0; row < c.batch * c.T * c.G; ++row) {
    const int64_t t = (row / c.G) % c.T, cb = (c.offset() + t) / c.B;
    const int64_t n = std::min<int64_t>(c.K - 1, cb);
    pool.resize(cb);
    for (int64_t j = 0; j < cb; ++j) pool[j] = static_cast<int32_t>(j);
    for (int64_t i = 0; i < n; ++i) {  // partial Fisher-Yates: the first n are a random subset
      std::uniform_int_distribution<int64_t> pick(i, cb - 1);
      std::swap(pool[i], pool[pick(rng)]);
    }
    std::sort(pool.begin(), pool.begin() + n);
    int32_t* r = idx + row * c.K;
    for (int64_t i = 0; i < c.K; ++i) r[i] = -1;
    for (int64_t i = 0; i < n; ++i) r[i] = pool[i];
    r[n] = static_cast<int32_t>(cb);
    cnt[row] = static_cast<int32_t>(n + 1);
  }
  return sel;
}

// The main branch's lse over the row's support (the selected blocks' tokens s <= p, or every
// s <= p when sel is null; p = offset + t), in double from the f32 copies: f32 [batch, H, T].
Tensor support_lse(const Case& c, const Tensor& q, const Tensor& k, const BlockSelection* sel,
                   double scale) {
  Tensor lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32);
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  float* out = lse.data<float>();
  const int64_t r = c.H / c.G, Tk = c.keys();
  cpu::parallel_for(c.batch * c.H, c.T * Tk * c.d, [&](int64_t begin, int64_t end) {
    std::vector<double> z;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / c.H, h = bh % c.H, g = h / r;
      for (int64_t t = 0; t < c.T; ++t) {
        z.clear();
        const int64_t p = c.offset() + t;  // the query's position
        const float* qt = qp + ((b * c.T + t) * c.H + h) * c.d;
        auto add_block = [&](int64_t j) {
          for (int64_t s = j * c.B; s <= std::min<int64_t>(p, (j + 1) * c.B - 1); ++s) {
            const float* ks = kp + ((b * Tk + s) * c.G + g) * c.d;
            double acc[4] = {0, 0, 0, 0};  // d % 4 == 0; bf16 x bf16 products are exact floats
            for (int64_t e = 0; e < c.d; e += 4)
              for (int u = 0; u < 4; ++u) acc[u] += static_cast<double>(qt[e + u] * ks[e + u]);
            z.push_back((acc[0] + acc[1] + acc[2] + acc[3]) * scale);
          }
        };
        if (sel == nullptr) {
          for (int64_t j = 0; j <= p / c.B; ++j) add_block(j);
        } else {
          const int64_t row = (b * c.T + t) * c.G + g;
          const int32_t n = sel->counts.data<int32_t>()[row];
          for (int32_t i = 0; i < n; ++i) add_block(sel->indices.data<int32_t>()[row * c.K + i]);
        }
        const double mx = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double x : z) sum += std::exp(x - mx);
        out[(b * c.H + h) * c.T + t] = static_cast<float>(mx + std::log(sum));
      }
    }
  });
  return lse;
}

// max |a - b| / max |b| (the gradients are O(weight / n_rows): no floor of 1).
double scaled_max_diff(const Tensor& a, const Tensor& b) { return max_diff_over_max(a, b); }

int64_t count_nonfinite(const Tensor& t) {
  int64_t n = 0;
  for (double x : t.to_double_vector()) n += std::isfinite(x) ? 0 : 1;
  return n;
}

struct Inputs {
  Tensor q, k, iq, ik;       // f32 CPU, bf16-exact
  Tensor gq, gk, giq, gik;   // bf16 CUDA, the same values
  BlockSelection sel, gsel;  // CPU / CUDA
  double scale = 0;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  auto make = [&](const Shape& s, float std, Tensor& host, Tensor& dev) {
    const Tensor x = random_tensor(s, seed++, DType::kF32, std).to(DType::kBF16);
    host = x.to(DType::kF32);
    dev = x.to(Device::kCUDA);
  };
  // A teacher sharper than uniform (scores ~ N(0, 4)), a student ~ N(0, 1).
  make({c.batch, c.T, c.H, c.d}, 2.0f, in.q, in.gq);
  make({c.batch, c.keys(), c.G, c.d}, 1.0f, in.k, in.gk);
  make({c.batch, c.T, c.G, c.dI}, 1.0f, in.iq, in.giq);
  make({c.batch, c.keys(), c.dI}, 1.0f, in.ik, in.gik);
  if (c.offset() > 0) {  // a shard's rows: the CPU exp-free top-k on these very inputs
    in.sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
    msa_index_topk(in.iq, in.ik, in.sel);
  } else {
    in.sel = random_selection(c, seed++);
  }
  in.gsel.block_size = c.B;
  in.gsel.topk = c.K;
  in.gsel.indices = in.sel.indices.to(Device::kCUDA);
  in.gsel.counts = in.sel.counts.to(Device::kCUDA);
  in.scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  return in;
}

struct LossOut {
  IndexLossResult res;
  Tensor diq, dik;  // f32 on the CPU
};

LossOut run_cpu(IndexLossMode mode, const Inputs& in, const Tensor& lse, double weight) {
  LossOut o;
  o.diq = Tensor::empty(in.iq.shape(), DType::kF32);
  o.dik = Tensor::empty(in.ik.shape(), DType::kF32);
  o.res =
      msa_index_loss(mode, in.q, in.k, lse, in.sel, in.iq, in.ik, in.scale, weight, o.diq, o.dik);
  return o;
}

LossOut run_gpu(IndexLossMode mode, const Inputs& in, const Tensor& glse, double weight) {
  Tensor diq = Tensor::empty(in.giq.shape(), DType::kF32, Device::kCUDA);
  Tensor dik = Tensor::empty(in.gik.shape(), DType::kF32, Device::kCUDA);
  diq.fill_(std::nan(""));  // poison: every element must be written
  dik.fill_(std::nan(""));
  LossOut o;
  o.res =
      msa_index_loss(mode, in.gq, in.gk, glse, in.gsel, in.giq, in.gik, in.scale, weight, diq, dik);
  o.diq = diq.to(Device::kCPU);
  o.dik = dik.to(Device::kCPU);
  return o;
}

// Gradients: f32 math on both sides (dS enters the GPU's mmas as bf16 hi + lo parts).
constexpr double kGradTol = 2e-3;
constexpr double kLossRelTol = 1e-3;
constexpr double kWeight = 0.7;

void expect_match(const LossOut& gpu, const LossOut& ref) {
  EXPECT_EQ(gpu.res.n_rows, ref.res.n_rows);
  ASSERT_TRUE(std::isfinite(gpu.res.loss)) << gpu.res.loss;
  ASSERT_TRUE(std::isfinite(ref.res.loss)) << ref.res.loss;
  EXPECT_GT(ref.res.loss, 1e-3) << "reference loss too small to compare";
  EXPECT_NEAR(gpu.res.loss, ref.res.loss, kLossRelTol * std::abs(ref.res.loss) + 1e-7)
      << "loss gpu " << gpu.res.loss << " cpu " << ref.res.loss;
  EXPECT_EQ(count_nonfinite(gpu.diq), 0) << "diq";
  EXPECT_EQ(count_nonfinite(gpu.dik), 0) << "dik";
  EXPECT_LT(scaled_max_diff(gpu.diq, ref.diq), kGradTol) << "diq";
  EXPECT_LT(scaled_max_diff(gpu.dik, ref.dik), kGradTol) << "dik";
  EXPECT_LT(rel_l2(gpu.diq, ref.diq), kGradTol) << "diq (relative L2)";
  EXPECT_LT(rel_l2(gpu.dik, ref.dik), kGradTol) << "dik (relative L2)";
}

void check_case(const Case& c, IndexLossMode mode, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << c << (mode == IndexLossMode::kSparse ? " sparse" : " dense"));
  ASSERT_LT(c.K, msa_num_blocks(c.keys(), c.B)) << "the case must have k < n_b";
  const Inputs in = make_inputs(c, seed);
  ASSERT_TRUE(cuda::index_loss_cuda_supported(in.gq, in.giq, dims_of(c)))
      << "the case must run the GPU kernels, not the CPU fallback";
  const bool sparse = mode == IndexLossMode::kSparse;
  const Tensor lse = support_lse(c, in.q, in.k, sparse ? &in.sel : nullptr, in.scale);
  const LossOut ref = run_cpu(mode, in, lse, kWeight);
  const LossOut gpu = run_gpu(mode, in, lse.to(Device::kCUDA), kWeight);
  expect_match(gpu, ref);
}

// The small recipe (H 4, G 2, d = dI = 16, B 16, k 4) at T 256, and with a partial last block.
const std::vector<Case> kSmall = {{2, 256, 4, 2, 16, 16, 16, 4}, {2, 250, 4, 2, 16, 16, 16, 4}};
// Odd r (3), r = 16 with G = 1, d != dI, every block size and head dim, partial last blocks.
const std::vector<Case> kMixed = {{2, 300, 6, 2, 32, 64, 32, 3},
                                  {1, 200, 16, 1, 64, 32, 64, 2},
                                  {2, 333, 8, 4, 128, 16, 16, 5},
                                  {1, 520, 2, 2, 16, 128, 128, 2},
                                  {2, 190, 5, 1, 64, 64, 16, 7}};
// Product shapes: d = dI = 128, B 128.
const std::vector<Case> kProduct = {{2, 1100, 32, 4, 128, 128, 128, 4},
                                    {2, 2048, 64, 4, 128, 128, 128, 12},
                                    {1, 4096, 32, 8, 128, 128, 128, 8}};

// The wgmma teacher's sizes (Hopper's default; d, dI and B of 64 or 128) at every
// count of heads per pipeline stage: r 3 (one stage of 3), r 5 (4 + 1), r 6 (4 + 2), r 4 at d 64
// (one 64-column tile per q row), and B 64 (one warpgroup, one head per stage) at d 64 and 128,
// with partial last blocks.
const std::vector<Case> kWgmmaStages = {
    {1, 700, 6, 2, 128, 128, 128, 3}, {2, 400, 10, 2, 128, 128, 128, 2},
    {1, 500, 12, 2, 128, 64, 128, 3}, {1, 450, 8, 2, 64, 128, 128, 3},
    {2, 300, 4, 2, 64, 64, 64, 3},    {1, 330, 4, 2, 128, 64, 64, 3}};

// On a GPU that runs this binary's sm_90a code the teacher is wgmma's (index_loss_wgmma), so the
// tests at d, dI, B of 64 or 128 run it there, except the MmaSyncTeacher* ones. The wgmma-teacher
// tests: skipped elsewhere (the mma.sync teacher would run and pass them); the teacher pinned on
// for the test's duration, whatever the caller's environment says.
#define SKIP_WITHOUT_WGMMA()                                                        \
  if (!cuda::sm90a_code_available()) GTEST_SKIP() << "needs a Hopper GPU (sm_90a)"; \
  ScopedEnv wgmma_env("MSA_INDEX_LOSS_WGMMA", "1")
// The mma.sync teacher on Hopper (MSA_INDEX_LOSS_WGMMA=0); elsewhere it is the default, which the
// other tests run.
#define SKIP_UNLESS_WGMMA_IS_DEFAULT()                                                       \
  if (!cuda::sm90a_code_available()) GTEST_SKIP() << "mma.sync is the default teacher here"; \
  ScopedEnv mma_sync_env("MSA_INDEX_LOSS_WGMMA", "0")

// check_case on each case, seeds first + 10, first + 20, ...
void check_cases(const std::vector<Case>& cases, IndexLossMode mode, uint64_t first_seed) {
  uint64_t seed = first_seed;
  for (const Case& c : cases) check_case(c, mode, seed += 10);
}

TEST(GpuMsaIndexLossTest, SmallRecipeSparse) {
  SKIP_WITHOUT_GPU();
  check_cases(kSmall, IndexLossMode::kSparse, 7100);
}

TEST(GpuMsaIndexLossTest, SmallRecipeDense) {
  SKIP_WITHOUT_GPU();
  check_cases(kSmall, IndexLossMode::kDenseTarget, 7200);
}

TEST(GpuMsaIndexLossTest, MixedShapesSparse) {
  SKIP_WITHOUT_GPU();
  check_cases(kMixed, IndexLossMode::kSparse, 7300);
}

TEST(GpuMsaIndexLossTest, MixedShapesDense) {
  SKIP_WITHOUT_GPU();
  check_cases(kMixed, IndexLossMode::kDenseTarget, 7400);
}

TEST(GpuMsaIndexLossTest, ProductShapesSparse) {
  SKIP_WITHOUT_GPU();
  check_cases(kProduct, IndexLossMode::kSparse, 7500);
}

TEST(GpuMsaIndexLossTest, ProductShapesDense) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 7600;
  // The dense CPU reference costs T^2: the two smaller product shapes.
  for (size_t i = 0; i + 1 < kProduct.size(); ++i)
    check_case(kProduct[i], IndexLossMode::kDenseTarget, seed += 10);
}

TEST(GpuMsaIndexLossTest, WgmmaStagesSparse) {
  SKIP_WITHOUT_GPU();
  SKIP_WITHOUT_WGMMA();
  check_cases(kWgmmaStages, IndexLossMode::kSparse, 7700);
}

TEST(GpuMsaIndexLossTest, WgmmaStagesDense) {
  SKIP_WITHOUT_GPU();
  SKIP_WITHOUT_WGMMA();
  check_cases(kWgmmaStages, IndexLossMode::kDenseTarget, 7800);
}

// The mma.sync teacher at the product's shapes on Hopper, both modes (ProductShapesSparse /
// ProductShapesDense run the wgmma teacher there).
TEST(GpuMsaIndexLossTest, MmaSyncTeacherProductShapes) {
  SKIP_WITHOUT_GPU();
  SKIP_UNLESS_WGMMA_IS_DEFAULT();
  check_case(kProduct[0], IndexLossMode::kSparse, 7910);
  check_case(kProduct[1], IndexLossMode::kSparse, 7920);
  check_case(kProduct[2], IndexLossMode::kSparse, 7925);
  check_case(kProduct[0], IndexLossMode::kDenseTarget, 7930);
}

// Fewer queries than keys (Tk = the Case's last field): query t at position Tk - T + t, the
// selection from the CPU msa_index_topk on the same inputs. Small shapes: Tk = 4 Tq and 2 Tq (the
// context-parallel case, offset a multiple of Tq and B), offsets that are not multiples of B with
// partial last blocks, a single query, odd r, d != dI, B 32 / 128.
const std::vector<Case> kOffsetSmall = {
    {2, 64, 4, 2, 16, 16, 16, 4, 256},  {2, 128, 4, 2, 16, 16, 16, 4, 256},
    {2, 100, 4, 2, 16, 16, 16, 4, 250}, {1, 1, 4, 2, 16, 16, 16, 4, 300},
    {2, 90, 6, 2, 32, 64, 32, 3, 333},  {1, 130, 2, 2, 16, 128, 128, 2, 520}};
// Product shapes (bf16, d = dI = 128, B 128, r = 16, k 16 < n_b): the cp shard Tk = 4 Tq = 4096,
// batch 2 at Tk = 4 Tq = 3072, and an offset of 2000 (not a multiple of B) with a partial last
// block.
const std::vector<Case> kOffsetProduct = {{1, 1024, 64, 4, 128, 128, 128, 16, 4096},
                                          {2, 768, 32, 2, 128, 128, 128, 16, 3072},
                                          {1, 1000, 32, 2, 128, 128, 128, 16, 3000}};

TEST(GpuMsaIndexLossTest, QueryOffsetSmallSparse) {
  SKIP_WITHOUT_GPU();
  check_cases(kOffsetSmall, IndexLossMode::kSparse, 8100);
}

TEST(GpuMsaIndexLossTest, QueryOffsetSmallDense) {
  SKIP_WITHOUT_GPU();
  check_cases(kOffsetSmall, IndexLossMode::kDenseTarget, 8200);
}

TEST(GpuMsaIndexLossTest, QueryOffsetProductShapesSparse) {
  SKIP_WITHOUT_GPU();
  check_cases(kOffsetProduct, IndexLossMode::kSparse, 8300);
}

TEST(GpuMsaIndexLossTest, QueryOffsetProductShapesDense) {
  SKIP_WITHOUT_GPU();
  check_cases(kOffsetProduct, IndexLossMode::kDenseTarget, 8400);
}

// True when a and b hold the same values bit for bit (f32 values are exact in double).
::testing::AssertionResult same_values(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  if (x.size() != y.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i]))
      return ::testing::AssertionFailure()
             << "first difference at element " << i << ": " << x[i] << " vs " << y[i];
  return ::testing::AssertionSuccess();
}

// With a query offset, several query chunks (sparse: MSA_INDEX_LOSS_CHUNK) and the deterministic
// mode (core/deterministic.h: per-slot partials added in a fixed order; dense: one key block per
// launch with MSA_INDEX_LOSS_DET_BLOCKS=1) still match the CPU reference; the deterministic mode
// repeats bit for bit.
void check_chunked_and_deterministic(const Case& c, uint64_t seed) {
  const Inputs in = make_inputs(c, seed);
  for (const IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
    const bool sparse = mode == IndexLossMode::kSparse;
    const Tensor lse = support_lse(c, in.q, in.k, sparse ? &in.sel : nullptr, in.scale);
    const Tensor glse = lse.to(Device::kCUDA);
    const LossOut ref = run_cpu(mode, in, lse, kWeight);
    for (const bool det : {false, true}) {
      for (const bool split : {false, true}) {
        if (split && !det && !sparse) continue;  // the default dense mode has one launch
        SCOPED_TRACE(testing::Message()
                     << c << (sparse ? " sparse" : " dense") << (det ? " deterministic" : "")
                     << (split ? " split" : ""));
        LossOut a, b;
        {
          const ScopedEnv chunk("MSA_INDEX_LOSS_CHUNK", split ? "40" : nullptr);
          const ScopedEnv blocks("MSA_INDEX_LOSS_DET_BLOCKS", split ? "1" : nullptr);
          const ScopedDeterministic scoped(det);
          a = run_gpu(mode, in, glse, kWeight);
          if (det) b = run_gpu(mode, in, glse, kWeight);
        }
        expect_match(a, ref);
        if (det) {
          EXPECT_EQ(a.res.loss, b.res.loss);
          EXPECT_TRUE(same_values(a.diq, b.diq)) << "diq";
          EXPECT_TRUE(same_values(a.dik, b.dik)) << "dik";
        }
      }
    }
  }
}

TEST(GpuMsaIndexLossTest, QueryOffsetChunkedAndDeterministic) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 8500;
  for (const Case& c : {kOffsetSmall[0], kOffsetSmall[2], kOffsetSmall[4], kOffsetProduct[0]})
    check_chunked_and_deterministic(c, seed += 10);
}

// The mma.sync teacher on Hopper with a query offset, chunks and the deterministic kernels
// (QueryOffsetChunkedAndDeterministic runs the wgmma teacher there at its product case), and at
// an offset that is not a multiple of B with a partial last block, both modes.
TEST(GpuMsaIndexLossTest, MmaSyncTeacherOffsetChunkedAndDeterministic) {
  SKIP_WITHOUT_GPU();
  SKIP_UNLESS_WGMMA_IS_DEFAULT();
  check_chunked_and_deterministic(kOffsetProduct[0], 8600);
  check_case(kOffsetProduct[2], IndexLossMode::kSparse, 8610);
  check_case(kOffsetProduct[2], IndexLossMode::kDenseTarget, 8620);
}

// With every block selected (k >= n_b) the sparse support is the dense one: the two GPU paths
// (KV-outer work lists vs the query-outer lse and implicit lists) must agree.
TEST(GpuMsaIndexLossTest, SparseWithAllBlocksEqualsDense) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 7700;
  for (const Case& c0 :
       {Case{2, 200, 4, 2, 16, 16, 16, 13}, Case{1, 300, 8, 2, 128, 128, 128, 3},
        Case{2, 70, 4, 2, 16, 16, 16, 13, 200}, Case{1, 100, 8, 2, 128, 128, 128, 3, 300}}) {
    Case c = c0;
    SCOPED_TRACE(testing::Message() << c);
    ASSERT_GE(c.K, msa_num_blocks(c.keys(), c.B));
    const Inputs in = make_inputs(c, seed += 10);
    const Tensor glse = support_lse(c, in.q, in.k, nullptr, in.scale).to(Device::kCUDA);
    const LossOut sparse = run_gpu(IndexLossMode::kSparse, in, glse, kWeight);
    const LossOut dense = run_gpu(IndexLossMode::kDenseTarget, in, glse, kWeight);
    ASSERT_TRUE(std::isfinite(sparse.res.loss));
    EXPECT_NEAR(sparse.res.loss, dense.res.loss, 1e-5 * std::abs(dense.res.loss));
    EXPECT_LT(scaled_max_diff(sparse.diq, dense.diq), 1e-4) << "diq";
    EXPECT_LT(scaled_max_diff(sparse.dik, dense.dik), 1e-4) << "dik";
  }
}

// Forcing small query chunks (work lists and partials per chunk) gives the same loss and
// gradients; the sparse loss is the same on every run (no atomics in its sums).
TEST(GpuMsaIndexLossTest, ChunkedAndRepeatedRunsAgree) {
  SKIP_WITHOUT_GPU();
  const Case c{2, 700, 8, 2, 64, 64, 64, 4};
  const Inputs in = make_inputs(c, 7800);
  const Tensor glse = support_lse(c, in.q, in.k, &in.sel, in.scale).to(Device::kCUDA);
  const LossOut a = run_gpu(IndexLossMode::kSparse, in, glse, kWeight);
  const LossOut b = run_gpu(IndexLossMode::kSparse, in, glse, kWeight);
  EXPECT_EQ(a.res.loss, b.res.loss) << "sparse loss must be deterministic";
  LossOut chunked;
  {
    const ScopedEnv env("MSA_INDEX_LOSS_CHUNK", "100");
    chunked = run_gpu(IndexLossMode::kSparse, in, glse, kWeight);
  }
  ASSERT_TRUE(std::isfinite(chunked.res.loss));
  EXPECT_NEAR(chunked.res.loss, a.res.loss, 1e-9 * std::abs(a.res.loss));
  EXPECT_LT(scaled_max_diff(chunked.diq, a.diq), 1e-5) << "diq";
  EXPECT_LT(scaled_max_diff(chunked.dik, a.dik), 1e-5) << "dik";
}

// weight scales the gradients only; the loss does not depend on it.
TEST(GpuMsaIndexLossTest, WeightScalesGradientsOnly) {
  SKIP_WITHOUT_GPU();
  const Case c{1, 256, 4, 2, 16, 16, 16, 4};
  const Inputs in = make_inputs(c, 7900);
  const Tensor glse = support_lse(c, in.q, in.k, &in.sel, in.scale).to(Device::kCUDA);
  const LossOut one = run_gpu(IndexLossMode::kSparse, in, glse, 1.0);
  const LossOut three = run_gpu(IndexLossMode::kSparse, in, glse, 3.0);
  EXPECT_EQ(one.res.loss, three.res.loss);
  std::vector<double> x = one.diq.to_double_vector();
  for (double& v : x) v *= 3.0;
  EXPECT_LT(scaled_max_diff(three.diq, Tensor::from_vector<double>(one.diq.shape(), x)), 1e-5);
}

// Timing, not a check (run with --gtest_also_run_disabled_tests): the product shape at 32K tokens,
// the loss against the main branch's forward that produced its lse (sparse: the KV-outer sparse
// attention; dense: attention_forward). Median of 5 after one warm-up, host clock around a
// synchronizing read.
// A NaN key makes the loss NaN (as the CPU's), on both teachers and in both modes: a finite loss
// beside NaN gradients hid it from every caller that checks the loss.
TEST(GpuMsaIndexLossTest, NanKeyGivesNanLoss) {
  SKIP_WITHOUT_GPU();
  const Case c{1, 256, 4, 2, 64, 64, 64, 2};
  const Inputs in = make_inputs(c, 7950);
  for (const char* wgmma : {"1", "0"}) {
    ScopedEnv teacher("MSA_INDEX_LOSS_WGMMA", wgmma);
    for (IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
      SCOPED_TRACE(std::string("MSA_INDEX_LOSS_WGMMA=") + wgmma +
                   (mode == IndexLossMode::kSparse ? " sparse" : " dense target"));
      const Tensor glse =
          support_lse(c, in.q, in.k, mode == IndexLossMode::kSparse ? &in.sel : nullptr, in.scale)
              .to(Device::kCUDA);
      EXPECT_TRUE(std::isfinite(run_gpu(mode, in, glse, 1.0).res.loss));
      Inputs bad = in;
      Tensor k = in.k.clone();
      k.data<float>()[5 * c.G * c.d] = std::nanf("");  // key s = 5, group 0
      bad.gk = k.to(DType::kBF16).to(Device::kCUDA);
      EXPECT_TRUE(std::isnan(run_gpu(mode, bad, glse, 1.0).res.loss));
    }
  }
}

TEST(GpuMsaIndexLossTest, DISABLED_ProductShapeTiming) {
  SKIP_WITHOUT_GPU();
  const int64_t T = std::getenv("MSA_TIMING_T") ? std::atoll(std::getenv("MSA_TIMING_T")) : 32768;
  const Case c{1, T, 64, 4, 128, 128, 128, 16};
  auto dev = [&](const Shape& s, uint64_t seed) {
    return random_tensor(s, seed, DType::kF32).to(DType::kBF16).to(Device::kCUDA);
  };
  const Tensor q = dev({c.batch, c.T, c.H, c.d}, 1), k = dev({c.batch, c.T, c.G, c.d}, 2),
               v = dev({c.batch, c.T, c.G, c.d}, 3), iq = dev({c.batch, c.T, c.G, c.dI}, 4),
               ik = dev({c.batch, c.T, c.dI}, 5);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCUDA);
  msa_index_topk(iq, ik, sel);
  Tensor out = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
  Tensor lse = Tensor::empty({c.batch, c.H, c.T}, DType::kF32, Device::kCUDA);
  Tensor diq = Tensor::empty(iq.shape(), DType::kF32, Device::kCUDA);
  Tensor dik = Tensor::empty(ik.shape(), DType::kF32, Device::kCUDA);
  auto sync = [&] { (void)lse.slice0(0, 1).view({-1}).slice0(0, 1).to_double_vector(); };
  auto median_ms = [&](const std::function<void()>& f) {
    f();
    sync();
    std::vector<double> ms;
    for (int i = 0; i < 5; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      sync();
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[2];
  };
  for (const IndexLossMode mode : {IndexLossMode::kSparse, IndexLossMode::kDenseTarget}) {
    const bool sparse = mode == IndexLossMode::kSparse;
    const double fwd = median_ms([&] {
      if (sparse)
        msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
      else
        attention_forward(q, k, v, scale, out, lse);
    });
    IndexLossResult res;
    const double loss = median_ms(
        [&] { res = msa_index_loss(mode, q, k, lse, sel, iq, ik, scale, 1.0, diq, dik); });
    // Teacher q.k multiply-adds over the support (the dominant term).
    const double support = sparse ? std::min<double>(c.K * c.B, c.T) : c.T / 2.0;
    const double tflops = 2.0 * c.T * c.H * support * c.d / (loss * 1e-3) / 1e12;
    std::printf(
        "%s T=%lld: main-branch forward %.2f ms, index loss %.2f ms (teacher %.0f TFLOP/s), "
        "loss %.5f\n",
        sparse ? "sparse" : "dense", static_cast<long long>(c.T), fwd, loss, tflops, res.loss);
    EXPECT_TRUE(std::isfinite(res.loss));
  }
}

}  // namespace
}  // namespace msa
