// Timing helpers shared by the msa-bench tables (CUDA builds only): device events around the
// region, a warm-up run first, the median of `iters` runs.
#pragma once

#include <algorithm>
#include <vector>

#include <cuda_runtime.h>

#include "core/check.h"

namespace msa::bench {

template <class Fn>
double median_ms(int iters, Fn&& fn) {
  fn();  // warm-up: plan building, heuristics, allocator growth
  MSA_CHECK(cudaDeviceSynchronize() == cudaSuccess, "bench: cudaDeviceSynchronize failed");
  std::vector<double> ms;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < std::max(iters, 1); ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  MSA_CHECK(cudaGetLastError() == cudaSuccess, "bench: a CUDA error occurred while timing");
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Dense bf16 tensor-core peak of the GPU the numbers are reported against (H100 SXM: 989.4
// TFLOP/s without sparsity), overridable with --peak_tflops.
inline constexpr double kH100PeakTflops = 989.4;

}  // namespace msa::bench
