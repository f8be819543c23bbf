// A communicator for GPU layouts on one GPU: NCCL refuses two ranks on one device, so the
// multi-rank GPU tests stage CUDA tensors through host memory and reduce them with MPI. What they
// test is the layout's use of the collectives on device tensors (what is gathered, scattered and
// summed where); the NCCL collectives themselves are checked against MPI by mpi_nccl_test on as
// many GPUs as ranks.
#pragma once

#include <mpi.h>

#include <memory>

#include "core/communicator.h"
#include "core/tensor.h"

namespace msa::test {

// CUDA tensors copied to the host, reduced by MPI, copied back; CPU tensors and scalars as MPI.
// bf16 sums (NCCL's, which MPI lacks: tensor parallelism's activation all-reduces) go through f32.
class HostStagingCommunicator : public Communicator {
 public:
  explicit HostStagingCommunicator(MPI_Comm comm) : mpi_(make_mpi_communicator(comm)) {}
  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  void all_reduce_sum(Tensor& t) override {
    Tensor h = summable(t);
    mpi_->all_reduce_sum(h);
    t.copy_from(h.to(t.dtype()));
  }
  std::unique_ptr<CommWork> all_reduce_sum_async(Tensor& t) override {
    all_reduce_sum(t);
    return std::make_unique<Done>();
  }
  void reduce_scatter_sum(const Tensor& in, Tensor& out) override {
    Tensor h = summable(out);
    mpi_->reduce_scatter_sum(summable(in), h);
    out.copy_from(h.to(out.dtype()));
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    Tensor h = out.to(Device::kCPU);
    mpi_->all_gather(in.to(Device::kCPU), h);
    out.copy_from(h);
  }
  void broadcast(Tensor& t, int root) override {
    Tensor h = t.to(Device::kCPU);
    mpi_->broadcast(h, root);
    t.copy_from(h);
  }
  void barrier() override { mpi_->barrier(); }
  double all_reduce_sum(double x) override { return mpi_->all_reduce_sum(x); }
  int64_t all_reduce_sum(int64_t x) override { return mpi_->all_reduce_sum(x); }
  uint64_t broadcast(uint64_t x, int root) override { return mpi_->broadcast(x, root); }

 private:
  // A host copy MPI can sum: bf16 as f32.
  static Tensor summable(const Tensor& t) {
    Tensor h = t.to(Device::kCPU);
    return h.dtype() == DType::kBF16 ? h.to(DType::kF32) : h;
  }
  struct Done : CommWork {
    void wait() override {}
  };
  std::unique_ptr<Communicator> mpi_;
};

// A dp x cp x tp layout (make_process_groups) whose groups all stage through the host.
inline absl::StatusOr<ProcessGroups> host_staged_process_groups(int tp, int cp) {
  return make_process_groups_with(tp, cp, [](MPI_Comm comm) -> std::unique_ptr<Communicator> {
    return std::make_unique<HostStagingCommunicator>(comm);
  });
}

}  // namespace msa::test
