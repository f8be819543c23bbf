// Error checking for CUDA, cuBLAS, cuDNN and NCCL calls: every call is wrapped, and a failure
// aborts naming the call, file and line. Include only from CUDA-enabled sources (*/cuda/*).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

#include "core/check.h"

#define MSA_CUDA_CHECK(call)                                                                  \
  do {                                                                                        \
    cudaError_t msa_err_ = (call);                                                            \
    MSA_CHECK(msa_err_ == cudaSuccess, "%s failed: %s", #call, cudaGetErrorString(msa_err_)); \
  } while (0)

// After a kernel launch: catches launch-configuration errors (not asynchronous faults).
#define MSA_CUDA_CHECK_LAUNCH(kernel_name)                                                 \
  do {                                                                                     \
    cudaError_t msa_err_ = cudaGetLastError();                                             \
    MSA_CHECK(msa_err_ == cudaSuccess, "launch of %s failed: %s", kernel_name,            \
              cudaGetErrorString(msa_err_));                                               \
  } while (0)

#define MSA_CUBLAS_CHECK(call)                                                              \
  do {                                                                                      \
    cublasStatus_t msa_st_ = (call);                                                        \
    MSA_CHECK(msa_st_ == CUBLAS_STATUS_SUCCESS, "%s failed: %s", #call,                     \
              cublasGetStatusString(msa_st_));                                              \
  } while (0)

#define MSA_CUDNN_CHECK(call)                                                                   \
  do {                                                                                          \
    cudnnStatus_t msa_st_ = (call);                                                             \
    MSA_CHECK(msa_st_ == CUDNN_STATUS_SUCCESS, "%s failed: %s", #call, cudnnGetErrorString(msa_st_)); \
  } while (0)

#define MSA_NCCL_CHECK(call)                                                                    \
  do {                                                                                          \
    ncclResult_t msa_st_ = (call);                                                              \
    MSA_CHECK(msa_st_ == ncclSuccess, "%s failed: %s", #call, ncclGetErrorString(msa_st_));     \
  } while (0)
