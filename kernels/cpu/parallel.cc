#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "core/check.h"
#include "core/env_switch.h"

namespace msa::cpu {
namespace {

std::atomic<int> g_num_threads_override{0};

// Below this much work per thread, starting a thread (tens of microseconds) is not worth it.
constexpr int64_t kMinWorkPerThread = 1 << 18;
constexpr int64_t kMaxThreads = 4096;

int default_num_threads() {
  static const int n = [] {
    if (const auto v = env_int("MSA_CPU_THREADS")) {
      // A bound instead of a narrowing cast: 2^32 + 4 must not run 4 threads.
      MSA_CHECK(*v >= 1 && *v <= kMaxThreads,
                "environment variable MSA_CPU_THREADS=%d is not a thread count in [1, %d]", *v,
                kMaxThreads);
      return static_cast<int>(*v);
    }
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return n;
}

}  // namespace

int num_threads() {
  int n = g_num_threads_override.load(std::memory_order_relaxed);
  return n > 0 ? n : default_num_threads();
}

void set_num_threads(int n) { g_num_threads_override.store(n, std::memory_order_relaxed); }

void parallel_for(int64_t n, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t total = n * std::max<int64_t>(cost, 1);
  const int64_t threads =
      std::min<int64_t>({num_threads(), n, std::max<int64_t>(1, total / kMinWorkPerThread)});
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  // Chunk c covers [c * n / threads, (c + 1) * n / threads); the caller runs chunk 0.
  for (int64_t c = 1; c < threads; ++c) {
    workers.emplace_back(fn, c * n / threads, (c + 1) * n / threads);
  }
  fn(0, n / threads);
  for (auto& w : workers) w.join();
}

}  // namespace msa::cpu
