// The CUDA indexer (msa_index_topk on device tensors: the tensor-core kernel for bf16, the
// CUDA-core kernel for f32, MSA_TOPK=reference and sizes the tensor cores do not take) against the
// CPU reference, which sees the same values in f32. Integer-valued inputs make every score exact in
// any summation order, so there the selections must be equal bit for bit, ties included; they also
// carry planted ties (a block copied into a later one) and one-token spikes (a single key whose dot
// beats every other token's for every row: max pooling must find it wherever it sits in its block).
// Random bf16 inputs may differ from the CPU's f32 sums in the last bits, so only near-ties may
// swap. Every GPU selection is also checked against the specification directly (counts, ascending
// order, local block last, -1 padding). Cases with fewer queries than keys (Tq < Tk: context
// parallelism) put query t at position Tk - Tq + t, on every kernel. Skips without a CUDA device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/msa.h"
#include "tests/testing/gpu.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/scoped_env.h"

namespace msa {
namespace {

using namespace test;  // tests/testing/gpu.h and gradcheck.h

using test::random_tensor;

// T query tokens; Tk key tokens (0: as many as queries), query t at position Tk - T + t.
struct IndexCase {
  int64_t batch, T, G, dI;
  int B, K;
  int64_t Tk = 0;
  int64_t keys() const { return Tk > 0 ? Tk : T; }
  int64_t offset() const { return keys() - T; }
};

std::string describe(const IndexCase& c) {
  return "batch=" + std::to_string(c.batch) + " T=" + std::to_string(c.T) +
         (c.Tk > 0 ? " Tk=" + std::to_string(c.Tk) : std::string()) + " G=" + std::to_string(c.G) +
         " dI=" + std::to_string(c.dI) + " B=" + std::to_string(c.B) + " k=" + std::to_string(c.K);
}

// Sizes the tensor-core kernel takes (B, dI in {16, 32, 64, 128}, k <= 32).
const std::vector<IndexCase> kTensorCoreCases = {
    {2, 256, 2, 16, 16, 4},      // the small recipe
    {1, 4096, 4, 128, 128, 16},  // the product, G 4
    {1, 4173, 8, 128, 128, 16},  // the product, G 8, partial last block
    {2, 3000, 3, 64, 64, 32},    // k 32, odd G (warps straddle tokens), batch 2, partial block
    {1, 20000, 2, 16, 16, 16},   // 1250 blocks: many key stages, list churn
    {1, 1500, 1, 32, 32, 8},     // G 1
    {2, 200, 3, 32, 32, 12},     // k > n_b
    {1, 500, 2, 64, 16, 1},      // k 1: the local block only
};

// Sizes only the CUDA-core kernel takes.
const std::vector<IndexCase> kReferenceOnlyCases = {
    {1, 700, 2, 24, 48, 5},  // dI 24, B 48
    {2, 300, 3, 16, 8, 6},   // B 8
};

Tensor bf16_rounded(const Tensor& t) { return t.to(DType::kBF16).to(DType::kF32); }

// f32 integers in [-spread, spread].
Tensor small_integers(const Shape& s, uint64_t seed, int spread) {
  Tensor t = Tensor::empty(s, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<float>()[i] =
        static_cast<float>(static_cast<int>(philox4x32(seed, i).v[0] % (2 * spread + 1)) - spread);
  return t;
}

struct Inputs {
  Tensor iq, ik;                             // f32 CPU, values exact in bf16
  std::vector<std::vector<int64_t>> spikes;  // per sequence: blocks holding a spike token
};

// Integer inputs in [-2, 2] with iq[..., 0] = 1 (so a key 1024 e_0 dots to 1024 with every row,
// more than the 4 dI - 2 <= 510 any other key can reach), exact in bf16 and in f32 sums.
// Planted ties: block 2's keys copied into block 4 and block 1's into block 6 (equal block maxima
// for every row). Spikes: up to min(k - 1, 3) other blocks get one key 1024 e_0 at a random
// position; every row after them must select them.
Inputs planted_integers(const IndexCase& c, uint64_t seed) {
  Inputs in;
  const int64_t Tk = c.keys();
  in.iq = small_integers({c.batch, c.T, c.G, c.dI}, seed, 2);
  in.ik = small_integers({c.batch, Tk, c.dI}, seed + 1, 2);
  float* q = in.iq.data<float>();
  float* k = in.ik.data<float>();
  for (int64_t r = 0; r < c.batch * c.T * c.G; ++r) q[r * c.dI] = 1.0f;
  const int64_t full_blocks = Tk / c.B;
  auto copy_block = [&](int64_t b, int64_t from, int64_t to) {
    if (to >= full_blocks) return;
    std::copy(k + (b * Tk + from * c.B) * c.dI, k + (b * Tk + (from + 1) * c.B) * c.dI,
              k + (b * Tk + to * c.B) * c.dI);
  };
  const std::set<int64_t> tie_blocks = {1, 2, 4, 6};
  in.spikes.resize(c.batch);
  for (int64_t b = 0; b < c.batch; ++b) {
    copy_block(b, 2, 4);
    copy_block(b, 1, 6);
    std::vector<int64_t> candidates;
    for (int64_t j = 0; j + 1 < full_blocks; ++j)
      if (tie_blocks.count(j) == 0) candidates.push_back(j);
    const int64_t n_spikes = std::min<int64_t>({c.K - 1, 3, int64_t(candidates.size())});
    for (int64_t i = 0; i < n_spikes; ++i) {
      const auto pick = philox4x32(seed + 2, b * 16 + i);
      const size_t at = pick.v[0] % candidates.size();
      const int64_t j = candidates[at];
      candidates.erase(candidates.begin() + at);
      const int64_t s = j * c.B + pick.v[1] % c.B;
      std::fill(k + (b * Tk + s) * c.dI, k + (b * Tk + s + 1) * c.dI, 0.0f);
      k[(b * Tk + s) * c.dI] = 1024.0f;
      in.spikes[b].push_back(j);
    }
  }
  return in;
}

Inputs random_inputs(const IndexCase& c, uint64_t seed, bool round_to_bf16) {
  Inputs in;
  in.iq = random_tensor({c.batch, c.T, c.G, c.dI}, seed, DType::kF32);
  in.ik = random_tensor({c.batch, c.keys(), c.dI}, seed + 1, DType::kF32);
  if (round_to_bf16) {
    in.iq = bf16_rounded(in.iq);
    in.ik = bf16_rounded(in.ik);
  }
  in.spikes.resize(c.batch);
  return in;
}

struct HostSelection {
  std::vector<int32_t> indices, counts;
};

HostSelection to_host(const BlockSelection& sel) {
  const Tensor i = sel.indices.to(Device::kCPU), n = sel.counts.to(Device::kCPU);
  return {std::vector<int32_t>(i.data<int32_t>(), i.data<int32_t>() + i.numel()),
          std::vector<int32_t>(n.data<int32_t>(), n.data<int32_t>() + n.numel())};
}

HostSelection cpu_select(const Inputs& in, const IndexCase& c) {
  BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCPU);
  msa_index_topk(in.iq, in.ik, sel);
  return to_host(sel);
}

HostSelection gpu_select(const Inputs& in, const IndexCase& c, DType dtype) {
  BlockSelection sel = BlockSelection::allocate(c.batch, c.T, c.G, c.B, c.K, Device::kCUDA);
  sel.indices.fill_(7.0);  // poison: every entry must be written
  sel.counts.fill_(0.0);
  msa_index_topk(in.iq.to(dtype).to(Device::kCUDA), in.ik.to(dtype).to(Device::kCUDA), sel);
  return to_host(sel);
}

// Rows violating the specification's shape of a selection: counts = min(k, c(t) + 1), entries
// strictly ascending in [0, c(t)], the last one c(t), then -1 (c(t) of the query's position).
int64_t malformed_rows(const HostSelection& s, const IndexCase& c) {
  int64_t bad = 0;
  for (int64_t row = 0; row < c.batch * c.T * c.G; ++row) {
    const int64_t t = c.offset() + (row / c.G) % c.T, ct = t / c.B;
    const int32_t* idx = s.indices.data() + row * c.K;
    const int64_t n = s.counts[row];
    bool ok = n == std::min<int64_t>(c.K, ct + 1) && idx[n - 1] == ct;
    for (int64_t i = 0; ok && i < n; ++i)
      ok = idx[i] >= 0 && idx[i] <= ct && (i == 0 || idx[i - 1] < idx[i]);
    for (int64_t i = n; ok && i < c.K; ++i) ok = idx[i] == -1;
    bad += !ok;
  }
  return bad;
}

void expect_identical(const HostSelection& gpu, const HostSelection& cpu, const std::string& what) {
  int64_t mismatches = 0;
  for (size_t i = 0; i < cpu.indices.size(); ++i) mismatches += gpu.indices[i] != cpu.indices[i];
  EXPECT_EQ(mismatches, 0) << "selection entries differing from the CPU's (of "
                           << cpu.indices.size() << "), " << what;
  EXPECT_EQ(gpu.counts, cpu.counts) << what;
}

// Rows (b, t, g) after a spike block that do not select it (all spikes fit in k - 1).
int64_t missed_spikes(const HostSelection& s, const Inputs& in, const IndexCase& c) {
  int64_t missed = 0;
  for (int64_t row = 0; row < c.batch * c.T * c.G; ++row) {
    const int64_t b = row / (c.T * c.G), t = c.offset() + (row / c.G) % c.T;
    const int32_t* idx = s.indices.data() + row * c.K;
    for (int64_t j : in.spikes[b])
      if (j < t / c.B) missed += std::find(idx, idx + c.K, j) == idx + c.K;
  }
  return missed;
}

// Random inputs: a row may differ from the CPU's only by swapping near-tied blocks. With theta the
// exact (double) block score of the CPU's k-th best, each block selected by one side only must
// score within eps of theta, eps bounding both sides' f32 rounding: 4 dI 2^-24 sum_i |q_i| max|ik|.
void expect_near_tie_differences(const HostSelection& gpu, const HostSelection& cpu,
                                 const Inputs& in, const IndexCase& c, const std::string& what) {
  const float* q = in.iq.data<float>();
  const float* k = in.ik.data<float>();
  double max_ik = 0;
  for (int64_t i = 0; i < in.ik.numel(); ++i) max_ik = std::max(max_ik, double(std::abs(k[i])));
  int64_t differing = 0, bad = 0;
  const int64_t rows = c.batch * c.T * c.G;
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / (c.T * c.G);
    const int64_t n = cpu.counts[row];
    const int32_t* a = cpu.indices.data() + row * c.K;
    const int32_t* g = gpu.indices.data() + row * c.K;
    if (std::equal(a, a + c.K, g) && gpu.counts[row] == n) continue;
    ++differing;
    if (gpu.counts[row] != n) {
      ++bad;
      continue;
    }
    const float* qr = q + row * c.dI;
    auto block_score = [&](int32_t j) {
      double best = -INFINITY;
      for (int64_t s = j * c.B; s < (j + 1) * c.B; ++s) {
        double x = 0;
        for (int64_t e = 0; e < c.dI; ++e) x += double(qr[e]) * k[(b * c.keys() + s) * c.dI + e];
        best = std::max(best, x);
      }
      return best;
    };
    double l1 = 0;
    for (int64_t e = 0; e < c.dI; ++e) l1 += std::abs(qr[e]);
    const double eps = 4.0 * c.dI * std::ldexp(1.0, -24) * l1 * max_ik;
    // Non-local entries are the first n - 1 of each side.
    const std::set<int32_t> sa(a, a + n - 1), sg(g, g + n - 1);
    double theta = INFINITY;
    for (int32_t j : sa) theta = std::min(theta, block_score(j));
    for (int32_t j : sa)
      if (sg.count(j) == 0) bad += std::abs(block_score(j) - theta) > eps;
    for (int32_t j : sg)
      if (sa.count(j) == 0) bad += std::abs(block_score(j) - theta) > eps;
  }
  EXPECT_EQ(bad, 0) << "blocks swapped that are not near-ties of the k-th best, " << what;
  EXPECT_LE(differing, rows / 100) << "rows differing at all (of " << rows << "), " << what;
}

// Small shapes, quick under compute-sanitizer racecheck (scripts/gpu_session.sh runs *Small*):
// the small recipe, k > n_b, and a case whose CTAs cycle through the 3-slot ring of key stages
// twice (dI 32: 256 keys a stage, up to 1100 keys), on both kernels, integer inputs.
TEST(GpuMsaIndexerTest, SmallShapesEqualCpuOnBothKernels) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 50000;
  for (const IndexCase& c : std::vector<IndexCase>{
           {2, 256, 2, 16, 16, 4}, {2, 200, 3, 32, 32, 12}, {1, 1100, 3, 32, 16, 6}}) {
    const Inputs in = planted_integers(c, seed += 10);
    const HostSelection cpu = cpu_select(in, c);
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      const std::string what = describe(c) + (dtype == DType::kBF16 ? " bf16" : " f32");
      const HostSelection gpu = gpu_select(in, c, dtype);
      EXPECT_EQ(malformed_rows(gpu, c), 0) << what;
      expect_identical(gpu, cpu, what);
      EXPECT_EQ(missed_spikes(gpu, in, c), 0) << what;
    }
  }
}

TEST(GpuMsaIndexerTest, TensorCoreSelectionEqualsCpuOnIntegerInputs) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 51000;
  for (const IndexCase& c : kTensorCoreCases) {
    const std::string what = describe(c);
    const Inputs in = planted_integers(c, seed += 10);
    const HostSelection cpu = cpu_select(in, c);
    const HostSelection gpu = gpu_select(in, c, DType::kBF16);
    EXPECT_EQ(malformed_rows(gpu, c), 0) << what;
    expect_identical(gpu, cpu, what);
    EXPECT_EQ(missed_spikes(cpu, in, c), 0) << "CPU reference, " << what;
    EXPECT_EQ(missed_spikes(gpu, in, c), 0) << what;
  }
}

TEST(GpuMsaIndexerTest, TensorCoreSelectionMatchesCpuUpToNearTiesOnRandomInputs) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 52000;
  for (const IndexCase& c : kTensorCoreCases) {
    const std::string what = describe(c);
    const Inputs in = random_inputs(c, seed += 10, /*round_to_bf16=*/true);
    const HostSelection cpu = cpu_select(in, c);
    const HostSelection gpu = gpu_select(in, c, DType::kBF16);
    EXPECT_EQ(malformed_rows(gpu, c), 0) << what;
    expect_near_tie_differences(gpu, cpu, in, c, what);
  }
}

// The CUDA-core kernel does the CPU's arithmetic (f32 products and sums in index order), so even
// random inputs give the same selection.
TEST(GpuMsaIndexerTest, F32SelectionIdenticalToCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 53000;
  std::vector<IndexCase> cases = kTensorCoreCases;
  cases.insert(cases.end(), kReferenceOnlyCases.begin(), kReferenceOnlyCases.end());
  for (const IndexCase& c : cases) {
    for (bool integer : {false, true}) {
      const std::string what = describe(c) + (integer ? " integer" : " random");
      const Inputs in = integer ? planted_integers(c, seed += 10)
                                : random_inputs(c, seed += 10, /*round_to_bf16=*/false);
      const HostSelection gpu = gpu_select(in, c, DType::kF32);
      EXPECT_EQ(malformed_rows(gpu, c), 0) << what;
      expect_identical(gpu, cpu_select(in, c), what);
    }
  }
}

// bf16 inputs on the CUDA-core kernel (forced, or for sizes the tensor cores do not take): the
// CPU sees the same bf16 values in f32, so the selection is the CPU's bit for bit.
TEST(GpuMsaIndexerTest, ReferenceKernelOnBf16IdenticalToCpu) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 54000;
  const std::vector<IndexCase> forced = {kTensorCoreCases[0], kTensorCoreCases[3],
                                         kTensorCoreCases[6]};
  for (bool force : {true, false}) {
    const ScopedEnv env("MSA_TOPK", force ? "reference" : nullptr);
    for (const IndexCase& c : force ? forced : kReferenceOnlyCases) {
      const std::string what = describe(c) + (force ? " MSA_TOPK=reference" : "");
      const Inputs in = random_inputs(c, seed += 10, /*round_to_bf16=*/true);
      const HostSelection gpu = gpu_select(in, c, DType::kBF16);
      EXPECT_EQ(malformed_rows(gpu, c), 0) << what;
      expect_identical(gpu, cpu_select(in, c), what);
    }
  }
}

// inf and NaN scores (an overflowing index branch): every eligible block can still be chosen and
// no placeholder index reaches the output. The CUDA-core kernel still matches the CPU (a NaN dot
// never wins a block's max, a NaN-only block scores -inf).
TEST(GpuMsaIndexerTest, NonFiniteScoresGiveWellFormedSelections) {
  SKIP_WITHOUT_GPU();
  for (const IndexCase& c : {kTensorCoreCases[0], kTensorCoreCases[3]}) {
    Inputs in = random_inputs(c, 55000 + c.T, /*round_to_bf16=*/true);
    float* q = in.iq.data<float>();
    float* k = in.ik.data<float>();
    for (int64_t r = 0; r < c.batch * c.T * c.G; r += 7) q[r * c.dI + r % c.dI] = INFINITY;
    for (int64_t r = 3; r < c.batch * c.T * c.G; r += 11) q[r * c.dI] = -INFINITY;
    for (int64_t s = 0; s < c.batch * c.T; s += 5) k[s * c.dI + s % c.dI] = NAN;
    for (int64_t b = 0; b < c.batch; ++b)  // whole NaN blocks
      for (int64_t j = 1; j * c.B < c.T; j += 3)
        std::fill(k + (b * c.T + j * c.B) * c.dI,
                  k + (b * c.T + std::min<int64_t>((j + 1) * c.B, c.T)) * c.dI, NAN);
    const std::string what = describe(c);
    EXPECT_EQ(malformed_rows(gpu_select(in, c, DType::kBF16), c), 0) << "tensor cores, " << what;
    const HostSelection f32 = gpu_select(in, c, DType::kF32);
    EXPECT_EQ(malformed_rows(f32, c), 0) << "f32, " << what;
    expect_identical(f32, cpu_select(in, c), "f32, " + what);
  }
}

// The Hopper kernel (msa_indexer_topk_wgmma.cu) takes bf16, d_I 128, B 128, k <= 32 on a device
// running sm_90a code; MSA_INDEXER_WGMMA=0 sends the same sizes to the mma.sync kernel. Both must
// give the CPU's selection bit for bit on integer inputs (planted ties and spikes included) and
// agree with it up to near-ties on random ones. Elsewhere (not a Hopper, or a build without
// sm_90a) both runs take mma.sync and the comparison between them holds trivially.
HostSelection gpu_select_mma_sync(const Inputs& in, const IndexCase& c) {
  const ScopedEnv env("MSA_INDEXER_WGMMA", "0");
  return gpu_select(in, c, DType::kBF16);
}

void expect_wgmma_equals_mma_sync_and_cpu(const std::vector<IndexCase>& cases, uint64_t seed) {
  for (const IndexCase& c : cases) {
    {
      const std::string what = describe(c) + " integer";
      const Inputs in = planted_integers(c, seed += 10);
      const HostSelection cpu = cpu_select(in, c);
      const HostSelection wgmma = gpu_select(in, c, DType::kBF16);
      const HostSelection mma_sync = gpu_select_mma_sync(in, c);
      EXPECT_EQ(malformed_rows(wgmma, c), 0) << what;
      expect_identical(wgmma, cpu, "wgmma vs CPU, " + what);
      expect_identical(mma_sync, cpu, "mma.sync vs CPU, " + what);
      expect_identical(wgmma, mma_sync, "wgmma vs mma.sync, " + what);
      EXPECT_EQ(missed_spikes(wgmma, in, c), 0) << what;
    }
    {
      const std::string what = describe(c) + " random";
      const Inputs in = random_inputs(c, seed += 10, /*round_to_bf16=*/true);
      const HostSelection cpu = cpu_select(in, c);
      const HostSelection wgmma = gpu_select(in, c, DType::kBF16);
      const HostSelection mma_sync = gpu_select_mma_sync(in, c);
      EXPECT_EQ(malformed_rows(wgmma, c), 0) << what;
      expect_near_tie_differences(wgmma, cpu, in, c, "wgmma vs CPU, " + what);
      expect_near_tie_differences(wgmma, mma_sync, in, c, "wgmma vs mma.sync, " + what);
    }
  }
}

TEST(GpuMsaIndexerTest, WgmmaIndexerEqualsMmaSyncAndCpu) {
  SKIP_WITHOUT_GPU();
  expect_wgmma_equals_mma_sync_and_cpu(
      {
          {1, 4096, 4, 128, 128, 16},  // the product shape
          {1, 4096, 4, 128, 128, 32},  // k 32 (31-entry lists)
          {2, 5000, 8, 128, 128, 16},  // G 8, batch 2, partial last block
          {2, 5000, 8, 128, 128, 32},
          {1, 3000, 3, 128, 128, 8},  // odd G: warpgroups straddle tokens; 7-entry lists
          {1, 2000, 1, 128, 128, 4},  // G 1 (a CTA spans two blocks); 3-entry lists
          {1, 1000, 2, 128, 128, 1},  // k 1: the local block only, nothing scanned
      },
      56000);
}

// Small enough for compute-sanitizer racecheck (scripts/gpu_session.sh runs *Small*): 6 CTAs whose
// 4-slot key ring wraps (5 blocks), k > n_b, a partial last block, k 4.
TEST(GpuMsaIndexerTest, WgmmaIndexerSmallEqualsMmaSyncAndCpu) {
  SKIP_WITHOUT_GPU();
  expect_wgmma_equals_mma_sync_and_cpu({{1, 700, 2, 128, 128, 4}, {2, 700, 2, 128, 128, 16}},
                                       57000);
}

// inf and NaN scores on the Hopper kernel: well-formed selections (NaN block maxima rank as -inf,
// no placeholder index reaches the output).
TEST(GpuMsaIndexerTest, WgmmaIndexerNonFiniteScoresGiveWellFormedSelections) {
  SKIP_WITHOUT_GPU();
  for (const IndexCase& c :
       {IndexCase{1, 2000, 4, 128, 128, 16}, IndexCase{2, 1500, 3, 128, 128, 32}}) {
    Inputs in = random_inputs(c, 58000 + c.T, /*round_to_bf16=*/true);
    float* q = in.iq.data<float>();
    float* k = in.ik.data<float>();
    for (int64_t r = 0; r < c.batch * c.T * c.G; r += 7) q[r * c.dI + r % c.dI] = INFINITY;
    for (int64_t r = 3; r < c.batch * c.T * c.G; r += 11) q[r * c.dI] = -INFINITY;
    for (int64_t s = 0; s < c.batch * c.T; s += 5) k[s * c.dI + s % c.dI] = NAN;
    for (int64_t b = 0; b < c.batch; ++b)  // whole NaN blocks
      for (int64_t j = 1; j * c.B < c.T; j += 3)
        std::fill(k + (b * c.T + j * c.B) * c.dI,
                  k + (b * c.T + std::min<int64_t>((j + 1) * c.B, c.T)) * c.dI, NAN);
    EXPECT_EQ(malformed_rows(gpu_select(in, c, DType::kBF16), c), 0) << describe(c);
  }
}

// Fewer queries than keys (context parallelism: Tq query tokens at positions Tk - Tq .. Tk - 1,
// all Tk index keys), on every CUDA path: the default bf16 route (the wgmma kernel for d_I 128 /
// B 128 on Hopper, else mma.sync where it takes the sizes), mma.sync forced (MSA_INDEXER_WGMMA=0),
// the CUDA-core kernel on bf16 (MSA_TOPK=reference) and on f32. Integer inputs: the CPU's
// selection bit for bit (planted ties and spikes included); random bf16-exact inputs: bit for bit
// on the CUDA-core kernel, up to near-ties on the tensor cores.
struct GpuPath {
  const char* name;
  const char* env;  // nullptr: none set
  const char* value;
  DType dtype;
  bool cpu_arithmetic;  // the CUDA-core kernel: equal to the CPU on any input
};

const std::vector<GpuPath> kEveryPath = {
    {"bf16 default", nullptr, nullptr, DType::kBF16, false},
    {"bf16 mma.sync (MSA_INDEXER_WGMMA=0)", "MSA_INDEXER_WGMMA", "0", DType::kBF16, false},
    {"bf16 MSA_TOPK=reference", "MSA_TOPK", "reference", DType::kBF16, true},
    {"f32", nullptr, nullptr, DType::kF32, true},
};

HostSelection gpu_select_on(const GpuPath& path, const Inputs& in, const IndexCase& c) {
  if (path.env == nullptr) return gpu_select(in, c, path.dtype);
  const ScopedEnv env(path.env, path.value);
  return gpu_select(in, c, path.dtype);
}

void expect_query_offset_equals_cpu(const std::vector<IndexCase>& cases, uint64_t seed) {
  for (const IndexCase& c : cases) {
    ASSERT_LT(c.T, c.keys()) << describe(c);
    const std::string shape =
        describe(c) + " offset=" + std::to_string(c.offset()) +
        (c.offset() % c.B == 0 ? " (a multiple of B)" : " (not a multiple of B)");
    const Inputs in = planted_integers(c, seed += 10);
    const HostSelection cpu = cpu_select(in, c);
    EXPECT_EQ(malformed_rows(cpu, c), 0) << "CPU reference, " << shape;
    EXPECT_EQ(missed_spikes(cpu, in, c), 0) << "CPU reference, " << shape;
    const Inputs rnd = random_inputs(c, seed += 10, /*round_to_bf16=*/true);
    const HostSelection cpu_rnd = cpu_select(rnd, c);
    for (const GpuPath& path : kEveryPath) {
      const std::string what = shape + ", " + path.name;
      const HostSelection gpu = gpu_select_on(path, in, c);
      EXPECT_EQ(malformed_rows(gpu, c), 0) << "integer, " << what;
      expect_identical(gpu, cpu, "integer, " + what);
      EXPECT_EQ(missed_spikes(gpu, in, c), 0) << "integer, " << what;
      const HostSelection gpu_rnd = gpu_select_on(path, rnd, c);
      EXPECT_EQ(malformed_rows(gpu_rnd, c), 0) << "random, " << what;
      if (path.cpu_arithmetic)
        expect_identical(gpu_rnd, cpu_rnd, "random, " + what);
      else
        expect_near_tie_differences(gpu_rnd, cpu_rnd, rnd, c, "random, " + what);
    }
  }
}

// Small enough for compute-sanitizer racecheck (scripts/gpu_session.sh runs *Small*).
TEST(GpuMsaIndexerTest, QueryOffsetSmallShapesEqualCpuOnEveryKernel) {
  SKIP_WITHOUT_GPU();
  expect_query_offset_equals_cpu(
      {
          {2, 256, 2, 16, 16, 4, 1024},    // the small recipe, Tk = 4 Tq, offset 48 B
          {1, 100, 3, 32, 16, 6, 1100},    // offset 1000 = 62.5 B; the key ring wraps
          {2, 200, 3, 32, 32, 12, 230},    // offset 30 < B, k > n_b
          {1, 256, 2, 128, 128, 4, 768},   // wgmma sizes, Tk = 3 Tq, offset 4 B
          {2, 300, 2, 128, 128, 16, 700},  // wgmma sizes, offset 400 = 3.125 B, partial block
      },
      59000);
}

TEST(GpuMsaIndexerTest, QueryOffsetEqualsCpuOnEveryKernel) {
  SKIP_WITHOUT_GPU();
  expect_query_offset_equals_cpu(
      {
          {1, 1024, 4, 128, 128, 16, 4096},  // the product shape, Tk = 4 Tq (cp 4, last rank)
          {2, 1024, 4, 128, 128, 16, 2048},  // Tk = 2 Tq, batch 2 (ik's batch stride is Tk)
          {1, 1024, 4, 128, 128, 32, 4096},  // k 32
          {1, 1000, 8, 128, 128, 16, 4173},  // offset 3173 = 24.8 B, partial last block, G 8
          {1, 700, 3, 128, 128, 8, 3000},    // odd G: warpgroups straddle tokens
          {2, 700, 3, 64, 64, 32, 3000},     // mma.sync, offset 2300 = 35.9 B, odd G
          {1, 2048, 2, 16, 16, 16, 20000},   // mma.sync, 1250 blocks, many key stages
          {1, 250, 2, 64, 16, 1, 500},       // k 1: the local block only
          {1, 300, 2, 24, 48, 5, 700},       // CUDA-core only (dI 24, B 48), offset 8.3 B
          {2, 128, 3, 16, 8, 6, 512},        // CUDA-core only (B 8), offset 48 B
      },
      60000);
}

}  // namespace
}  // namespace msa
