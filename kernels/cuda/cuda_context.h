// Per-process CUDA library state shared by the dense kernels: the cuBLASLt and cuDNN handles and
// one growable device workspace. Everything runs on the default stream (core/tensor.h), so the
// workspace can be reused by the next call without synchronization: stream order serializes them.
#pragma once

#include <cstddef>

#include "core/cuda/cuda_check.h"

namespace msa::cuda {

cublasLtHandle_t cublaslt_handle();
cudnnHandle_t cudnn_handle();

// A device buffer of at least `bytes`, valid until the next call (grows, never shrinks).
void* workspace(size_t bytes);

// 256 when p is 256-byte aligned, else the largest power of two dividing its address.
int pointer_alignment(const void* p);

}  // namespace msa::cuda
