// Context parallelism on the GPU (run under mpirun; skips without CUDA): one bf16 training step
// on every layout with cp > 1 that the world allows (-np 2: cp 2; -np 4: cp 4, dp 2 x cp 2,
// cp 2 x tp 2) equals one rank's on the same global batch on the same GPU: the LM and index
// losses and every parameter's full gradient, for dense, MSA and hybrid stacks, in the sparse and
// the dense-attention warm-up phases, with and without packed documents (spanning shards: the
// kernels then take query offsets that are not multiples of the block size), in the contiguous
// and the zig-zag layout (with and without packing). Two model sizes: head
// dim 4 / d_I 8 / B 8 (the CUDA-core kernels: cuDNN and the tensor-core MSA kernels take no such
// sizes) and head dim 64 / d_I 64 / B 64 (cuDNN, the mma.sync indexer, the KV-outer sparse
// attention and the index loss kernels), both with k < n_b. So every CUDA kernel's query offset
// (queries bottom-right of the gathered keys) is exercised, with the all-gather of K, V and the
// index keys and the reduce-scatter of their gradients on device tensors.
//
// With a GPU per rank the collectives are NCCL's; when the ranks share one GPU (NCCL refuses two
// ranks on one device) they stage through the host (host_staging_communicator.h).
// Tolerances: bf16 compute, so a layout changes rounding (GEMMs over T / cp rows, the key
// gradients summed in f32 over ranks after each was rounded to bf16): 1e-2 relative on the
// losses, 5e-2 relative L2 on each gradient (0.25 where near-tied blocks may be selected
// differently, with a control at 5e-2: see the test). The bugs this is for are O(1): a kernel that
// ignores the query offset (a query masked as if at position t instead of p0 + t, keys strided by
// the query count), a key gradient not returned to its owner.
#include <mpi.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/cuda_device.h"
#include "gtest/gtest.h"
#include "model/context_parallel.h"
#include "tests/testing/host_staging_communicator.h"
#include "tests/testing/mpi_stacks.h"
#include "tests/testing/parallel_training.h"

namespace msa {
namespace {

using test::Stack;

constexpr double kGradTol = 5e-2;

struct Layout {
  int tp, cp;
};
std::vector<Layout> layouts() {
  if (test::world_size() == 2) return {{1, 2}};
  if (test::world_size() == 4) return {{1, 4}, {1, 2}, {2, 2}};
  return {};
}

// The kernels' two size classes (see the top): `fast` = head dim 64, d_I 64, B 64 (512 tokens:
// 8 blocks, 2 per rank at cp 4; top-3).
struct Size {
  const char* name;
  int64_t seq_len;
  std::vector<int64_t> doc_starts;  // packed documents (spanning shards, off block boundaries)
};
const Size kSizes[] = {{"small (CUDA-core kernels)", 64, {0, 5, 23, 40, 41}},
                       {"fast (tensor-core kernels)", 512, {0, 100, 230, 300, 301}}};

ModelConfig config(const Size& size, Stack stack) {
  ModelConfig c = test::tiny(stack);
  if (size.seq_len == 512) {
    c.d_model = 128;
    c.n_heads = 8;
    c.n_kv_heads = 2;
    c.head_dim = 64;
    c.ffn_dim = 256;
    c.msa.block_size = 64;
    c.msa.index_dim = 64;
    c.msa.topk = 3;
  }
  return c;
}

// NCCL groups when every rank of this node has its own GPU (the acceptance run on 2-8 GPUs);
// otherwise the ranks share one and the collectives stage through the host.
bool one_gpu_per_rank() {
  int local_ranks = 0;
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &local_ranks);
  MPI_Comm_free(&node);
  return cuda_device_count() >= local_ranks;
}
absl::StatusOr<ProcessGroups> groups_for(const Layout& l, bool nccl) {
  return nccl ? make_process_groups(l.tp, l.cp, /*nccl=*/true)
              : test::host_staged_process_groups(l.tp, l.cp);
}

class MpiContextParallelGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!MSA_HAS_CUDA || !cuda_available()) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(select_cuda_device(node_local_rank(), -1).ok());
  }
};

TEST_F(MpiContextParallelGpuTest, LossesAndEveryParametersFullGradientMatchOneRank) {
  // Collective (MPI_Comm_split_type): asked on every rank here, not inside rank 0's printout.
  const bool nccl = one_gpu_per_rank();
  test::Worst worst, worst_near_ties;
  int cases = 0;
  for (const Layout& l : layouts()) {
    auto made = groups_for(l, nccl);
    ASSERT_TRUE(made.ok()) << made.status();
    const ProcessGroups groups = std::move(*made);
    for (const Size& size : kSizes)
      for (Stack stack : {Stack::kDense, Stack::kMsa, Stack::kHybrid}) {
        const ModelConfig base = config(size, stack);
        const bool fast = size.seq_len == 512;
        for (test::Phase phase : test::phases_of(base))
          // variant % 4: plain, packed, zig-zag and packed, zig-zag (msa-train's default layout,
          // whose rank 0 holds two chunks far apart); variant >= 4: the same with every block
          // selected (the control of the near-tie tolerance below: fast size, MSA layers, sparse
          // phase only).
          for (int variant = 0; variant < 8; ++variant) {
            const bool packed = variant % 4 == 1 || variant % 4 == 2;
            const bool zigzag = variant % 4 >= 2;
            const bool all_blocks = variant >= 4;
            if (phase == test::Phase::kFrozenBackboneWarmup) continue;  // the CPU test has it
            const bool selects = base.any_msa() && phase == test::Phase::kSparse;
            if (all_blocks && !(fast && selects)) continue;
            ModelConfig c = base;
            if (all_blocks) c.msa.topk = size.seq_len / c.msa.block_size;
            // The fast size selects 3 of 8 blocks by max-pooled index scores, whose block maxima
            // (extremes of 64 token scores each) lie close together; a layout's bf16 rounding
            // (tensor parallelism's partial sums above all) makes a few rows of layer 1 pick
            // another near-tied block than one rank does, and attend to other keys. Measured on
            // an H100 at cp 2 x tp 2 (MSA stack, plain): 0.18 on layers.1.attn.wk.weight, the
            // query / key projections only; with every block selected the same case is within
            // kGradTol (variants 4-7 check that for each layout). A kernel that mishandles an
            // offset or a gathered key moves the gradients by O(1).
            const bool near_ties = fast && selects && !all_blocks;
            const double tol = near_ties ? 0.25 : kGradTol;
            ++cases;
            const std::string where = absl::StrFormat(
                "%s; %s; %s; phase %s%s%s%s", groups.describe(), size.name, test::stack_name(stack),
                test::phase_name(phase), packed ? "; packed documents" : "",
                zigzag ? "; zig-zag" : "", all_blocks ? "; every block selected" : "");
            const std::vector<int64_t> starts = packed ? size.doc_starts : std::vector<int64_t>{};
            // One rank with the whole global batch (2 sequences per dp rank), then the layout.
            const test::StepGradients one =
                test::step_gradients(c, nullptr, 2 * groups.dp_size, phase, 1, Device::kCUDA, false,
                                     size.seq_len, starts);
            const test::StepGradients many = test::step_gradients(
                c, &groups, 2, phase, 1, Device::kCUDA, false, size.seq_len, starts, zigzag);
            // Gradients within tol, losses within 1e-2 (expect_same_step's one tolerance is the
            // gradients'; the losses are checked tighter here).
            test::expect_same_step(many, one, c, phase, tol, where,
                                   near_ties ? worst_near_ties : worst);
            EXPECT_LT(
                test::max_over_ranks(test::rel_diff(many.metrics.lm_loss, one.metrics.lm_loss)),
                1e-2)
                << where;
            EXPECT_EQ(many.metrics.tokens, one.metrics.tokens) << where;
          }
      }
  }
  EXPECT_GT(cases, 0);
  if (test::world_rank() == 0)
    std::printf(
        "%d cases on the GPU (%s); worst gradient relative L2 difference %.3g (%s); where "
        "near-tied blocks may flip (fast size, MSA layers, sparse phase, 3 of 8 blocks) %.3g "
        "(%s)\n",
        cases, nccl ? "NCCL" : "one GPU, host-staged collectives", worst.rel, worst.where.c_str(),
        worst_near_ties.rel, worst_near_ties.where.c_str());
}

}  // namespace
}  // namespace msa
