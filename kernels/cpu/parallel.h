// Row-parallel loops for the CPU reference kernels.
//
// parallel_for splits [0, n) into contiguous chunks, one per thread, and every index is handled by
// exactly one call of `fn`. Kernels use it only where each index owns its outputs and computes them
// in a fixed order, so results are bit-identical for any thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace msa::cpu {

// Threads parallel_for may use: set_num_threads' value, else $MSA_CPU_THREADS, else the hardware
// concurrency.
int num_threads();
// Overrides num_threads(); n <= 0 restores the default. Not meant to race with running kernels.
void set_num_threads(int n);

// Runs fn(begin, end) on disjoint chunks that cover [0, n). `cost` is the rough work of one index
// (multiply-adds): loops too small to repay starting threads run on the calling thread.
void parallel_for(int64_t n, int64_t cost, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace msa::cpu
