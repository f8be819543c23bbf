#include "core/cuda_device.h"

#include "absl/strings/str_format.h"

#if MSA_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace msa {

int cuda_device_count() {
#if MSA_HAS_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

absl::StatusOr<int> select_cuda_device(int local_rank, int requested) {
  const int n = cuda_device_count();
  if (n == 0)
    return absl::FailedPreconditionError("invalid --gpu: no CUDA device in this build/machine");
  if (requested >= n)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --gpu: device %d requested but only %d are present", requested, n));
  const int device = requested >= 0 ? requested : local_rank % n;
#if MSA_HAS_CUDA
  if (cudaSetDevice(device) != cudaSuccess)
    return absl::InternalError(absl::StrFormat("invalid --gpu: cudaSetDevice(%d) failed", device));
#endif
  return device;
}

}  // namespace msa
