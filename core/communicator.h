// Collectives over a group of ranks (DESIGN.md section 5): one interface, an MPI backend for CPU
// tensors. Every call is collective: all ranks of the group call it in the same order.
//
// Process groups: world = dp x cp x tp with tp innermost, then cp, so world rank w is
// (dp = w / (tp cp), cp = (w / tp) % cp, tp = w % tp): the tp ranks of one context shard are
// neighbours (one node), then the cp ranks of one dp replica.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace msa {

// A collective in flight (see Communicator::all_reduce_sum_async).
class CommWork {
 public:
  virtual ~CommWork() = default;
  // Blocks until the result is in the tensor (NCCL: until later work on the tensor's stream is
  // ordered after it; the host does not wait).
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: t = sum over ranks of t.
  virtual void all_reduce_sum(Tensor& t) = 0;
  // Starts t = sum over ranks of t and returns at once; t must not be touched until wait().
  // Ranks must start their async collectives in the same order.
  virtual std::unique_ptr<CommWork> all_reduce_sum_async(Tensor& t) = 0;
  // in: size() * n elements; out: n elements = sum over ranks of in's chunk rank().
  virtual void reduce_scatter_sum(const Tensor& in, Tensor& out) = 0;
  // in: n elements; out: size() * n elements, rank r's in at chunk r.
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Scalar helpers.
  virtual double all_reduce_sum(double x) = 0;
  virtual int64_t all_reduce_sum(int64_t x) = 0;
  virtual uint64_t broadcast(uint64_t x, int root) = 0;
};

// A communicator over `comm` (not freed; MPI_COMM_WORLD or a split of it).
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm);

// With CUDA builds: a communicator over `comm` whose CUDA tensors go through NCCL (one ncclComm,
// created here from an MPI broadcast of rank 0's unique id, on the current CUDA device) and whose
// CPU tensors and scalars go through MPI. Collective over `comm`. Defined in core/cuda/.
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm);

// The MPI communicators make_process_groups splits off MPI_COMM_WORLD, freed when the groups go
// (after the communicators built on them: a caller that makes groups per test or per layout ran
// out of MPI's communicator ids after ~16,000).
struct SplitMpiComms {
  std::vector<MPI_Comm> comms;
  SplitMpiComms() = default;
  SplitMpiComms(const SplitMpiComms&) = delete;
  SplitMpiComms& operator=(const SplitMpiComms&) = delete;
  ~SplitMpiComms();
};

struct ProcessGroups {
  // Declared first so that it is destroyed last, after every Communicator below.
  std::unique_ptr<SplitMpiComms> split_comms;
  int world_rank = 0, world_size = 1;
  int local_rank = 0;  // rank among the processes of this node (picks the GPU)
  int dp_rank = 0, dp_size = 1;
  int cp_rank = 0, cp_size = 1;
  int tp_rank = 0, tp_size = 1;
  // dp: same (cp, tp) ranks; cp: same (dp, tp); tp: same (dp, cp). dp_cp: same tp rank, the
  // dp x cp ranks that hold the same parameters and sum their gradients (set only when cp > 1).
  std::unique_ptr<Communicator> world, dp, cp, tp, dp_cp;
  // The group over which parameter gradients are summed (and ZeRO-1 shards the optimizer): dp x
  // cp, which is dp itself without context parallelism.
  Communicator* gradient_group() const { return dp_cp ? dp_cp.get() : dp.get(); }
  std::string describe() const;  // "world 8 = dp 2 x cp 2 x tp 2; rank 3 is dp 0, cp 1, tp 1"
};

// Splits MPI_COMM_WORLD into data-, context- and tensor-parallel groups. Fails (naming --tp or
// --cp) when tp * cp does not divide the world size. Requires MPI to be initialized. With `nccl`
// (CUDA builds; the CUDA device must already be selected) every group also gets its NCCL
// communicator, once.
absl::StatusOr<ProcessGroups> make_process_groups(int tp, int cp, bool nccl);

// The same layout with each group's communicator made by `make` from its MPI communicator (tests
// run GPU layouts on one device through a host-staging communicator this way).
using CommunicatorFactory = std::function<std::unique_ptr<Communicator>(MPI_Comm)>;
absl::StatusOr<ProcessGroups> make_process_groups_with(int tp, int cp,
                                                       const CommunicatorFactory& make);

// This process's rank among the processes on its node (MPI_COMM_TYPE_SHARED). Collective over
// MPI_COMM_WORLD: every rank must call it.
int node_local_rank();

}  // namespace msa
