#include "kernels/cuda/cuda_context.h"

#include <cstdint>
#include <mutex>

#include "core/tensor.h"

namespace msa::cuda {

cublasLtHandle_t cublaslt_handle() {
  static cublasLtHandle_t handle = [] {
    cublasLtHandle_t h = nullptr;
    MSA_CUBLAS_CHECK(cublasLtCreate(&h));
    return h;
  }();
  return handle;
}

cudnnHandle_t cudnn_handle() {
  static cudnnHandle_t handle = [] {
    cudnnHandle_t h = nullptr;
    MSA_CUDNN_CHECK(cudnnCreate(&h));
    MSA_CUDNN_CHECK(cudnnSetStream(h, nullptr));
    return h;
  }();
  return handle;
}

void* workspace(size_t bytes) {
  static std::mutex mu;
  static void* data = nullptr;
  static size_t capacity = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (bytes > capacity) {
    if (data != nullptr) {
      // Work queued on the stream may still read the old buffer.
      MSA_CUDA_CHECK(cudaDeviceSynchronize());
      MSA_CUDA_CHECK(cudaFree(data));
    }
    capacity = (bytes + (1u << 20) - 1) / (1u << 20) * (1u << 20);
    // The tensors' cache may hold the memory as free blocks of other sizes: return them and retry
    // once before failing (as a tensor allocation does).
    if (cudaMalloc(&data, capacity) != cudaSuccess) {
      (void)cudaGetLastError();
      release_cached_cuda_memory();
      MSA_CUDA_CHECK(cudaMalloc(&data, capacity));
    }
  }
  return data;
}

int pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

}  // namespace msa::cuda
