// msa-allreduce-bench: all-reduce bus bandwidth of our Communicator, next to raw NCCL (or raw
// MPI on the CPU) on the same buffer, for docs/perf.md.
//   mpirun -np 2 msa-allreduce-bench --mb=256 --iters=20            (CUDA: NCCL backend)
//   mpirun -np 2 msa-allreduce-bench --device=cpu --mb=16           (MPI backend)
// Bus bandwidth = bytes * 2 (n - 1) / n / time (the nccl-tests convention: what each link
// carries in a ring all-reduce), from the median of --iters timed runs after 3 warm-up runs.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "core/communicator.h"
#include "core/cuda_device.h"
#include "core/tensor.h"
#include "launch/program_usage.h"

#if MSA_HAS_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include "core/cuda/cuda_check.h"
#endif

ABSL_FLAG(std::string, device, "auto", "cuda (NCCL backend), cpu (MPI backend) or auto.");
ABSL_FLAG(int64_t, mb, 256, "Buffer size in MiB.");
ABSL_FLAG(int, iters, 20, "Timed all-reduces per measurement (median reported).");
ABSL_FLAG(std::string, dtype, "f32", "Element type: f32 or bf16 (bf16: CUDA only).");

namespace {

using msa::Communicator;
using msa::Device;
using msa::DType;
using msa::Tensor;

double wall() { return MPI_Wtime(); }

// Median seconds of fn over iters runs; `sync` waits until the work is done on this rank.
template <class Fn, class Sync>
double median_seconds(int iters, Fn&& fn, Sync&& sync) {
  for (int i = 0; i < 3; ++i) fn();
  sync();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = wall();
    fn();
    sync();
    double dt = wall() - t0, slowest = 0;
    MPI_Allreduce(&dt, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    t.push_back(slowest);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "All-reduce bus bandwidth of the Communicator vs raw NCCL / MPI.\n"
      "  mpirun -np 2 msa-allreduce-bench --mb=256");
  if (msa::has_stray_arguments(absl::ParseCommandLine(argc, argv), 1, "msa-allreduce-bench")) return 1;
  // Checked before MPI starts, identically on every rank (so no rank waits on one that left).
  const std::string dev_flag = absl::GetFlag(FLAGS_device), dtype_flag = absl::GetFlag(FLAGS_dtype);
  const int64_t mb = absl::GetFlag(FLAGS_mb);
  const int iters = absl::GetFlag(FLAGS_iters);
  std::string bad;
  if (dev_flag != "cuda" && dev_flag != "cpu" && dev_flag != "auto")
    bad = "invalid --device: '" + dev_flag + "' (use cuda, cpu or auto)";
  else if (dtype_flag != "f32" && dtype_flag != "bf16")
    bad = "invalid --dtype: '" + dtype_flag + "' (use f32 or bf16)";
  // MPI_Allreduce counts elements in an int: at most 2^31 - 1 f32 elements, 8191 MiB.
  else if (mb < 1 || mb > 8191)
    bad = "invalid --mb: " + std::to_string(mb) + " (a buffer of 1 to 8191 MiB)";
  else if (iters < 1)
    bad = "invalid --iters: " + std::to_string(iters) + " (at least 1 timed all-reduce)";
  if (!bad.empty()) {
    std::fprintf(stderr, "msa-allreduce-bench: %s\n", bad.c_str());
    return 1;
  }
  MPI_Init(&argc, &argv);
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  const bool cuda = dev_flag == "cuda" || (dev_flag == "auto" && msa::cuda_available());
  const DType dtype = dtype_flag == "bf16" ? DType::kBF16 : DType::kF32;
  if (dtype == DType::kBF16 && !cuda) {
    if (rank == 0) std::fprintf(stderr, "msa-allreduce-bench: bf16 needs --device=cuda\n");
    MPI_Finalize();
    return 1;
  }
  int gpu = -1;
  if (cuda) {
    auto g = msa::select_cuda_device(msa::node_local_rank(), -1);
    // Every rank fails alike here (no GPU), so all finish instead of one aborting the job.
    if (!g.ok()) {
      if (rank == 0)
        std::fprintf(stderr, "msa-allreduce-bench: --device=cuda: %s\n",
                     std::string(g.status().message()).c_str());
      MPI_Finalize();
      return 1;
    }
    gpu = *g;
  }
  std::unique_ptr<Communicator> comm = cuda ? msa::make_nccl_communicator(MPI_COMM_WORLD)
                                            : msa::make_mpi_communicator(MPI_COMM_WORLD);
  const int64_t bytes = mb << 20;
  const int64_t numel = bytes / static_cast<int64_t>(msa::dtype_size(dtype));
  const Device device = cuda ? Device::kCUDA : Device::kCPU;
  Tensor buf = Tensor::zeros({numel}, dtype, device);
  buf.fill_(1.0 / 1024);
  auto sync = [&] {
#if MSA_HAS_CUDA
    if (cuda) cudaDeviceSynchronize();
#endif
  };
  auto busbw = [&](double s) { return bytes * 2.0 * (n - 1) / n / s / 1e9; };

  const double ours = median_seconds(
      iters, [&] { comm->all_reduce_sum(buf); }, sync);
  const double ours_async = median_seconds(
      iters, [&] { comm->all_reduce_sum_async(buf)->wait(); }, sync);
  double raw = 0;
  const char* raw_name = cuda ? "raw ncclAllReduce" : "raw MPI_Allreduce";
  if (cuda) {
#if MSA_HAS_CUDA
    ncclUniqueId id;
    // Checked like the Communicator's calls: a failed init or all-reduce timed nothing and was
    // printed as a huge bandwidth.
    if (rank == 0) MSA_NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclComm_t nc;
    MSA_NCCL_CHECK(ncclCommInitRank(&nc, n, id, rank));
    cudaStream_t stream;
    MSA_CUDA_CHECK(cudaStreamCreate(&stream));
    const ncclDataType_t t = dtype == DType::kBF16 ? ncclBfloat16 : ncclFloat32;
    raw = median_seconds(
        iters,
        [&] {
          MSA_NCCL_CHECK(
              ncclAllReduce(buf.raw_data(), buf.raw_data(), numel, t, ncclSum, nc, stream));
        },
        [&] { MSA_CUDA_CHECK(cudaStreamSynchronize(stream)); });
    MSA_CUDA_CHECK(cudaStreamDestroy(stream));
    MSA_NCCL_CHECK(ncclCommDestroy(nc));
#endif
  } else if (n > 1) {
    raw = median_seconds(
        iters,
        [&] {
          MPI_Allreduce(MPI_IN_PLACE, buf.raw_data(), static_cast<int>(numel), MPI_FLOAT, MPI_SUM,
                        MPI_COMM_WORLD);
        },
        sync);
  }
  if (rank == 0) {
    std::printf("msa-allreduce-bench: %d ranks, %s%s, %lld MiB %s buffer, median of %d\n", n,
                cuda ? "cuda (NCCL backend)" : "cpu (MPI backend)",
                cuda ? (" gpu " + std::to_string(gpu) + " on rank 0").c_str() : "",
                static_cast<long long>(bytes >> 20), msa::dtype_name(dtype), iters);
    std::printf("%-34s %10s %12s\n", "path", "time ms", "busbw GB/s");
    std::printf("%-34s %10.3f %12.2f\n", "Communicator::all_reduce_sum", ours * 1e3, busbw(ours));
    std::printf("%-34s %10.3f %12.2f\n", "Communicator::all_reduce_sum_async", ours_async * 1e3,
                busbw(ours_async));
    if (raw > 0) std::printf("%-34s %10.3f %12.2f\n", raw_name, raw * 1e3, busbw(raw));
  }
  comm.reset();
  MPI_Finalize();
  return 0;
}
