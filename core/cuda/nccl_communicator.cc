// The NCCL backend of Communicator (core/communicator.h): CUDA tensors go through one ncclComm
// per process group, CPU tensors and scalars through MPI.
//
// Streams: model work runs on the default stream. Blocking collectives are enqueued on it, so
// they are ordered with the kernels around them without any host synchronization. Async
// all-reduces run on a separate non-blocking stream (so they overlap the backward's kernels):
// they start after the work already enqueued on the default stream, and wait() makes later
// default-stream work wait for them.
#include <mpi.h>

#include "absl/strings/str_format.h"
#include "core/communicator.h"
#include "core/cuda/cuda_check.h"

namespace msa {
namespace {

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
  }
  return ncclFloat32;
}

class NcclWork : public CommWork {
 public:
  explicit NcclWork(cudaEvent_t done) : done_(done) {}
  ~NcclWork() override {
    wait();
    if (done_ != nullptr) cudaEventDestroy(done_);
  }
  void wait() override {
    if (waited_) return;
    MSA_CUDA_CHECK(cudaStreamWaitEvent(0, done_, 0));
    waited_ = true;
  }

 private:
  cudaEvent_t done_ = nullptr;
  bool waited_ = false;
};

class NcclCommunicator : public Communicator {
 public:
  explicit NcclCommunicator(MPI_Comm comm) : mpi_(make_mpi_communicator(comm)) {
    ncclUniqueId id;
    if (mpi_->rank() == 0) MSA_NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm);
    MSA_NCCL_CHECK(ncclCommInitRank(&nccl_, mpi_->size(), id, mpi_->rank()));
    MSA_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
  }
  ~NcclCommunicator() override {
    // Leave the communicator to the process exit if CUDA is already being torn down.
    if (cudaStreamSynchronize(comm_stream_) == cudaSuccess) {
      cudaStreamDestroy(comm_stream_);
      ncclCommDestroy(nccl_);
    }
  }

  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }

  void all_reduce_sum(Tensor& t) override {
    if (t.is_cpu()) return mpi_->all_reduce_sum(t);
    MSA_NCCL_CHECK(ncclAllReduce(t.raw_data(), t.raw_data(), t.numel(), nccl_type(t.dtype()),
                                 ncclSum, nccl_, 0));
  }
  std::unique_ptr<CommWork> all_reduce_sum_async(Tensor& t) override {
    if (t.is_cpu()) return mpi_->all_reduce_sum_async(t);
    cudaEvent_t ready, done;
    MSA_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    MSA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    MSA_CUDA_CHECK(cudaEventRecord(ready, 0));  // the gradients packed so far
    MSA_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready, 0));
    MSA_NCCL_CHECK(ncclAllReduce(t.raw_data(), t.raw_data(), t.numel(), nccl_type(t.dtype()),
                                 ncclSum, nccl_, comm_stream_));
    MSA_CUDA_CHECK(cudaEventRecord(done, comm_stream_));
    MSA_CUDA_CHECK(cudaEventDestroy(ready));  // released once recorded work completes
    return std::make_unique<NcclWork>(done);
  }
  void reduce_scatter_sum(const Tensor& in, Tensor& out) override {
    if (in.is_cpu() && out.is_cpu()) return mpi_->reduce_scatter_sum(in, out);
    MSA_CHECK(in.is_cuda() && out.is_cuda() && in.numel() == out.numel() * size() &&
                  in.dtype() == out.dtype(),
              "reduce_scatter_sum: in %s must hold size() = %d chunks of out %s (both on CUDA)",
              in.describe(), size(), out.describe());
    MSA_NCCL_CHECK(ncclReduceScatter(in.raw_data(), out.raw_data(), out.numel(),
                                     nccl_type(in.dtype()), ncclSum, nccl_, 0));
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    if (in.is_cpu() && out.is_cpu()) return mpi_->all_gather(in, out);
    MSA_CHECK(in.is_cuda() && out.is_cuda() && out.numel() == in.numel() * size() &&
                  in.dtype() == out.dtype(),
              "all_gather: out %s must hold size() = %d copies of in %s (both on CUDA)",
              out.describe(), size(), in.describe());
    MSA_NCCL_CHECK(
        ncclAllGather(in.raw_data(), out.raw_data(), in.numel(), nccl_type(in.dtype()), nccl_, 0));
  }
  void broadcast(Tensor& t, int root) override {
    if (t.is_cpu()) return mpi_->broadcast(t, root);
    MSA_NCCL_CHECK(
        ncclBroadcast(t.raw_data(), t.raw_data(), t.numel(), nccl_type(t.dtype()), root, nccl_, 0));
  }
  void barrier() override {
    MSA_CUDA_CHECK(cudaStreamSynchronize(0));
    mpi_->barrier();
  }
  double all_reduce_sum(double x) override { return mpi_->all_reduce_sum(x); }
  int64_t all_reduce_sum(int64_t x) override { return mpi_->all_reduce_sum(x); }
  uint64_t broadcast(uint64_t x, int root) override { return mpi_->broadcast(x, root); }

 private:
  std::unique_ptr<Communicator> mpi_;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm) {
  return std::make_unique<NcclCommunicator>(comm);
}

}  // namespace msa
