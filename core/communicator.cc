#include "core/communicator.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_format.h"
#include "core/check.h"

namespace msa {
namespace {

MPI_Datatype mpi_type(const Tensor& t, const char* op) {
  MSA_CHECK(t.is_cpu(), "%s: the MPI backend takes CPU tensors, got %s", op, t.describe());
  switch (t.dtype()) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kF64:
      return MPI_DOUBLE;
    case DType::kI32:
      return MPI_INT;
    case DType::kBF16:
      return MPI_UINT16_T;  // gather / broadcast only
  }
  return MPI_BYTE;
}

// MPI counts elements in an int: a larger count wrapped (2^32 + 8 elements reduced 8, silently).
// Calls that can split do so (kMpiChunk elements at a time); the others refuse, naming the op.
constexpr int64_t kMpiChunk = int64_t(1) << 30;
int mpi_count(int64_t n, const char* op) {
  MSA_CHECK(n <= std::numeric_limits<int>::max(),
            "%s: %d elements per call exceed MPI's int count (2^31 - 1); use more ranks or the "
            "NCCL backend",
            op, n);
  return static_cast<int>(n);
}

// fn(pointer, count) over `t` in pieces of at most kMpiChunk elements (in-place element-wise
// calls: all-reduce, broadcast).
template <class Fn>
void in_mpi_chunks(Tensor& t, Fn&& fn) {
  char* data = static_cast<char*>(t.raw_data());
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype()));
  for (int64_t i = 0; i < t.numel(); i += kMpiChunk)
    fn(data + i * es, static_cast<int>(std::min(kMpiChunk, t.numel() - i)));
}

class MpiWork : public CommWork {
 public:
  MpiWork() = default;
  ~MpiWork() override { wait(); }
  void wait() override {
    if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  MPI_Request* request() { return &request_; }

 private:
  MPI_Request request_ = MPI_REQUEST_NULL;
};

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(Tensor& t) override {
    MSA_CHECK(t.dtype() != DType::kBF16, "all_reduce_sum: bf16 sums are not supported on MPI");
    if (size_ == 1) return;
    const MPI_Datatype type = mpi_type(t, "all_reduce_sum");
    in_mpi_chunks(t,
                  [&](void* p, int n) { MPI_Allreduce(MPI_IN_PLACE, p, n, type, MPI_SUM, comm_); });
  }
  std::unique_ptr<CommWork> all_reduce_sum_async(Tensor& t) override {
    MSA_CHECK(t.dtype() != DType::kBF16, "all_reduce_sum_async: bf16 sums are not supported on MPI");
    auto work = std::make_unique<MpiWork>();
    if (size_ > 1)
      MPI_Iallreduce(MPI_IN_PLACE, t.raw_data(), mpi_count(t.numel(), "all_reduce_sum_async"),
                     mpi_type(t, "all_reduce_sum_async"), MPI_SUM, comm_, work->request());
    return work;
  }
  void reduce_scatter_sum(const Tensor& in, Tensor& out) override {
    MSA_CHECK(in.numel() == out.numel() * size_ && in.dtype() == out.dtype(),
              "reduce_scatter_sum: in %s must hold size() = %d chunks of out %s", in.describe(),
              size_, out.describe());
    // MPI_UINT16_T would add bf16 bit patterns as integers.
    MSA_CHECK(in.dtype() != DType::kBF16, "reduce_scatter_sum: bf16 sums are not supported on MPI");
    if (size_ == 1) {
      out.copy_from(in.view(out.shape()));
      return;
    }
    MPI_Reduce_scatter_block(in.raw_data(), out.raw_data(),
                             mpi_count(out.numel(), "reduce_scatter_sum"),
                             mpi_type(in, "reduce_scatter_sum"), MPI_SUM, comm_);
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    MSA_CHECK(out.numel() == in.numel() * size_ && in.dtype() == out.dtype(),
              "all_gather: out %s must hold size() = %d copies of in %s", out.describe(), size_,
              in.describe());
    if (size_ == 1) {
      out.copy_from(in.view(out.shape()));
      return;
    }
    const int count = mpi_count(in.numel(), "all_gather");
    MPI_Allgather(in.raw_data(), count, mpi_type(in, "all_gather"), out.raw_data(), count,
                  mpi_type(out, "all_gather"), comm_);
  }
  void broadcast(Tensor& t, int root) override {
    if (size_ == 1) return;
    const MPI_Datatype type = mpi_type(t, "broadcast");
    in_mpi_chunks(t, [&](void* p, int n) { MPI_Bcast(p, n, type, root, comm_); });
  }
  void barrier() override { MPI_Barrier(comm_); }
  double all_reduce_sum(double x) override {
    double y = x;
    if (size_ > 1) MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, comm_);
    return y;
  }
  int64_t all_reduce_sum(int64_t x) override {
    int64_t y = x;
    if (size_ > 1) MPI_Allreduce(&x, &y, 1, MPI_INT64_T, MPI_SUM, comm_);
    return y;
  }
  uint64_t broadcast(uint64_t x, int root) override {
    if (size_ > 1) MPI_Bcast(&x, 1, MPI_UINT64_T, root, comm_);
    return x;
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm) {
  return std::make_unique<MpiCommunicator>(comm);
}

std::string ProcessGroups::describe() const {
  if (cp_size == 1)
    return absl::StrFormat("world %d = dp %d x tp %d; rank %d is dp %d, tp %d", world_size, dp_size,
                           tp_size, world_rank, dp_rank, tp_rank);
  return absl::StrFormat("world %d = dp %d x cp %d x tp %d; rank %d is dp %d, cp %d, tp %d",
                         world_size, dp_size, cp_size, tp_size, world_rank, dp_rank, cp_rank,
                         tp_rank);
}

SplitMpiComms::~SplitMpiComms() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // MPI_Finalize freed them
  for (MPI_Comm& c : comms) MPI_Comm_free(&c);
}

int node_local_rank() {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int r = 0;
  MPI_Comm_rank(node, &r);
  MPI_Comm_free(&node);
  return r;
}

#if !MSA_HAS_CUDA
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm) {
  MSA_CHECK(false, "make_nccl_communicator: this build has no CUDA (configure with MSA_CUDA=ON)");
  return nullptr;
}
#endif

absl::StatusOr<ProcessGroups> make_process_groups(int tp, int cp, bool nccl) {
  return make_process_groups_with(tp, cp,
                                  nccl ? CommunicatorFactory(make_nccl_communicator)
                                       : CommunicatorFactory(make_mpi_communicator));
}

absl::StatusOr<ProcessGroups> make_process_groups_with(int tp, int cp,
                                                       const CommunicatorFactory& make) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  MSA_CHECK(initialized, "make_process_groups: MPI is not initialized");
  ProcessGroups g;
  MPI_Comm_rank(MPI_COMM_WORLD, &g.world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g.world_size);
  g.local_rank = node_local_rank();
  if (tp < 1 || g.world_size % tp != 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --tp: %d does not divide the world size %d (mpirun -np)", tp, g.world_size));
  // cp > world / tp first: tp * cp in int would wrap (--tp=2 --cp=2^31 - 1 "divided" 2 ranks).
  if (cp < 1 || cp > g.world_size / tp || g.world_size % (tp * cp) != 0)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --cp: --tp %d x --cp %d does not divide the world size %d "
                        "(mpirun -np)",
                        tp, cp, g.world_size));
  g.tp_size = tp;
  g.cp_size = cp;
  g.dp_size = g.world_size / (tp * cp);
  g.tp_rank = g.world_rank % tp;
  g.cp_rank = (g.world_rank / tp) % cp;
  g.dp_rank = g.world_rank / (tp * cp);
  // The split communicators live as long as the groups (SplitMpiComms). Colours name what the
  // members share; keys order them by the remaining coordinate.
  g.split_comms = std::make_unique<SplitMpiComms>();
  auto split = [&](int colour, int key) {
    MPI_Comm c;
    MPI_Comm_split(MPI_COMM_WORLD, colour, key, &c);
    g.split_comms->comms.push_back(c);
    return c;
  };
  const MPI_Comm dp_comm = split(g.cp_rank * tp + g.tp_rank, g.dp_rank);
  const MPI_Comm cp_comm = split(g.dp_rank * tp + g.tp_rank, g.cp_rank);
  const MPI_Comm tp_comm = split(g.dp_rank * cp + g.cp_rank, g.tp_rank);
  g.world = make(MPI_COMM_WORLD);
  g.dp = make(dp_comm);
  g.cp = make(cp_comm);
  g.tp = make(tp_comm);
  if (cp > 1) g.dp_cp = make(split(g.tp_rank, g.dp_rank * cp + g.cp_rank));
  return g;
}

}  // namespace msa
