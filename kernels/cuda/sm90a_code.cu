// Whether this binary's code for the current device carries the sm_90a features (wgmma, setmaxnreg,
// bulk copies): a Hopper running an sm_90a cubin. An sm_90 (no "a") or JIT-compiled PTX build
// reports the same compute capability, 9.0, but compiles the wgmma kernels to their trapping
// #else branch, so a one-thread probe kernel answers it, once per device.
#include <cuda_runtime.h>

#include "core/cuda/cuda_check.h"
#include "kernels/cuda/kernel_dispatch.h"

namespace msa::cuda {
namespace {

__global__ void sm90a_probe_kernel(int* flag) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *flag = 1;
#else
  *flag = 0;
#endif
}

}  // namespace

bool sm90a_code_available() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  constexpr int kMaxDevices = 64;
  static int known[kMaxDevices] = {};  // per device: 0 not probed, 1 available, 2 not
  if (dev < kMaxDevices && known[dev] != 0) return known[dev] == 1;
  int major = 0;
  MSA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  int result = 0;
  if (major == 9) {
    int* flag = nullptr;
    MSA_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    MSA_CUDA_CHECK(cudaMemset(flag, 0, sizeof(int)));
    sm90a_probe_kernel<<<1, 1>>>(flag);
    MSA_CUDA_CHECK_LAUNCH("sm90a_probe_kernel");
    MSA_CUDA_CHECK(cudaMemcpy(&result, flag, sizeof(int), cudaMemcpyDeviceToHost));
    MSA_CUDA_CHECK(cudaFree(flag));
  }
  if (dev < kMaxDevices) known[dev] = result == 1 ? 1 : 2;
  return result == 1;
}

}  // namespace msa::cuda
