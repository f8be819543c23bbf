// msa-bench: benchmark tables for the GPU kernels.
//   msa-bench msa [--seqs=8192,32768,131072 --heads=32 --groups=8 --head_dim=128 ...]
// Times each MSA stage with CUDA events (warm-up run first, then the median of --iters runs).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/tensor.h"
#include "kernels/msa.h"
#include "launch/program_usage.h"

#if MSA_HAS_CUDA
#include <cuda_runtime.h>
#endif

ABSL_FLAG(std::string, seqs, "8192,32768,131072", "Sequence lengths (forward + backward).");
ABSL_FLAG(int, heads, 32, "Query heads H.");
ABSL_FLAG(int, groups, 8, "KV groups G.");
ABSL_FLAG(int, head_dim, 128, "Head dimension d.");
ABSL_FLAG(int, block_size, 128, "MSA block size B.");
ABSL_FLAG(int, topk, 16, "MSA top-k (blocks per query and group, local included).");
ABSL_FLAG(int, index_dim, 64, "Index dimension d_I.");
ABSL_FLAG(int, iters, 3, "Timed runs per stage (median reported).");

namespace {

#if MSA_HAS_CUDA
template <class Fn>
double median_ms(int iters, Fn&& fn) {
  fn();  // warm-up
  cudaDeviceSynchronize();
  std::vector<double> ms;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < iters; ++i) {
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
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int bench_msa() {
  using namespace msa;
  const int H = absl::GetFlag(FLAGS_heads), G = absl::GetFlag(FLAGS_groups),
            d = absl::GetFlag(FLAGS_head_dim), B = absl::GetFlag(FLAGS_block_size),
            K = absl::GetFlag(FLAGS_topk), dI = absl::GetFlag(FLAGS_index_dim),
            iters = absl::GetFlag(FLAGS_iters);
  std::printf(
      "MSA kernels (first generation, CUDA cores), H=%d G=%d d=%d B=%d k=%d d_I=%d, bf16, "
      "batch 1; times in ms (median of %d)\n",
      H, G, d, B, K, dI, iters);
  std::printf("%8s | %8s | %8s | %9s | %9s | %9s | %10s | %12s\n", "seq", "pool", "top-k",
              "attn fwd", "attn bwd", "fwd total", "fwd+bwd", "attn TFLOP/s");
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_seqs), ',')) {
    int64_t T = 0;
    if (!absl::SimpleAtoi(part, &T)) {
      std::fprintf(stderr, "msa-bench: bad --seqs entry '%s'\n", std::string(part).c_str());
      return 1;
    }
    const int64_t nb = msa_num_blocks(T, B);
    auto make = [&](const Shape& s, uint64_t seed) {
      Tensor t = Tensor::empty(s, DType::kBF16, Device::kCUDA);
      fill_normal(t, seed, 0.0f, 1.0f);
      return t;
    };
    Tensor q = make({1, T, H, d}, 1), k = make({1, T, G, d}, 2), v = make({1, T, G, d}, 3);
    Tensor iq = make({1, T, G, dI}, 4), ik = make({1, T, G, dI}, 5), dout = make({1, T, H, d}, 6);
    Tensor kbar = Tensor::empty({1, nb, G, dI}, DType::kBF16, Device::kCUDA);
    BlockSelection sel = BlockSelection::allocate(1, T, G, B, K, Device::kCUDA);
    Tensor out = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
    Tensor lse = Tensor::empty({1, H, T}, DType::kF32, Device::kCUDA);
    Tensor dq = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
    Tensor dk = Tensor::empty(k.shape(), DType::kBF16, Device::kCUDA);
    Tensor dv = Tensor::empty(v.shape(), DType::kBF16, Device::kCUDA);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const double pool = median_ms(iters, [&] { msa_block_pool_forward(ik, B, kbar); });
    const double topk = median_ms(iters, [&] { msa_index_topk(iq, kbar, sel); });
    const double fwd =
        median_ms(iters, [&] { msa_sparse_attention_forward(q, k, v, sel, scale, out, lse); });
    const double bwd = median_ms(iters, [&] {
      msa_sparse_attention_backward(dout, q, k, v, out, lse, sel, scale, dq, dk, dv);
    });
    // FLOPs of the selected blocks only: QK^T and PV, 2 * d each per (query, head, key).
    const Tensor idx = sel.indices.to(Device::kCPU), cnt = sel.counts.to(Device::kCPU);
    double keys = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t row = t * G + g;
        for (int i = 0; i < cnt.data<int32_t>()[row]; ++i) {
          const int64_t j = idx.data<int32_t>()[row * K + i];
          keys += static_cast<double>(std::min<int64_t>((j + 1) * B, t + 1) - j * B);
        }
      }
    const double flops = 4.0 * d * keys * (H / G);
    std::printf("%8lld | %8.2f | %8.2f | %9.2f | %9.2f | %9.2f | %10.2f | %12.2f\n",
                static_cast<long long>(T), pool, topk, fwd, bwd, pool + topk + fwd,
                pool + topk + fwd + bwd, flops / (fwd * 1e-3) / 1e12);
    std::fflush(stdout);
  }
  std::printf(
      "cuDNN dense flash attention baseline: not built yet (kernels/cuda has no cuDNN "
      "attention), so no speed-up column.\n");
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Benchmarks the GPU kernels and prints a table.\n"
      "  msa-bench msa [--seqs=8192,32768,131072] [--heads=32 --groups=8 --head_dim=128 ...]");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() != 2 || std::string(rest[1]) != "msa") {
    std::fprintf(stderr, "msa-bench: expected the benchmark name: msa (see --help)\n");
    return 1;
  }
#if MSA_HAS_CUDA
  if (!msa::cuda_available()) {
    std::fprintf(stderr, "msa-bench: no CUDA device\n");
    return 1;
  }
  return bench_msa();
#else
  std::fprintf(stderr, "msa-bench: built without CUDA (-DMSA_CUDA=OFF)\n");
  return 1;
#endif
}
