// msa-bench dense: the bf16 GEMMs of one layer (and the LM head) at the model's shapes through
// cuBLASLt (forward Y = X W^T, backward dX = dY W and dW += dY^T X into f32), and cuDNN's dense
// causal flash attention forward and backward, each with its TFLOP/s. These are the ceilings the
// training step's MFU is made of.
#if MSA_HAS_CUDA
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "core/deterministic.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "launch/bench/bench.h"
#include "launch/bench/device_inputs.h"
#include "launch/bench/flags.h"
#include "launch/bench/model_preset.h"
#include "launch/bench/timing.h"

namespace msa::bench {
namespace {

}  // namespace

int bench_dense() {
  const ModelConfig c = preset_model(absl::GetFlag(FLAGS_model), false);
  const int iters = std::max(absl::GetFlag(FLAGS_iters), 5);
  const int64_t batch = absl::GetFlag(FLAGS_batch);
  const int64_t D = c.d_model, H = c.n_heads, G = c.n_kv_heads, d = c.head_dim, F = c.ffn_dim,
                V = c.vocab_size;
  struct Gemm {
    const char* name;
    int64_t M, K;
  };
  const std::vector<Gemm> gemms = {{"q proj", H * d, D}, {"k/v proj", G * d, D},
                                   {"o proj", D, H * d}, {"gate/up", F, D},
                                   {"down", D, F},        {"lm head", V, D}};
  for (int64_t T : parse_lengths(absl::GetFlag(FLAGS_model_seqs), "model_seqs")) {
    const int64_t N = batch * T;
    std::printf("bf16 GEMMs (cuBLASLt, f32 accumulation), N = %lld tokens, model %s; ms and "
                "TFLOP/s (median of %d)\n",
                static_cast<long long>(N), absl::GetFlag(FLAGS_model).c_str(), iters);
    std::printf("%-9s | %6s %6s | %8s %7s | %8s %7s | %8s %7s\n", "GEMM", "out", "in", "fwd ms",
                "TF/s", "dX ms", "TF/s", "dW ms", "TF/s");
    for (const Gemm& g : gemms) {
      Tensor x = random_device({N, g.K}, 1), w = random_device({g.M, g.K}, 2);
      Tensor y = Tensor::empty({N, g.M}, DType::kBF16, Device::kCUDA);
      Tensor dy = random_device({N, g.M}, 3);
      Tensor dx = Tensor::empty({N, g.K}, DType::kBF16, Device::kCUDA);
      Tensor dw = Tensor::zeros({g.M, g.K}, DType::kF32, Device::kCUDA);
      Tensor none;
      const double flops = 2.0 * N * g.M * g.K;
      const double f = median_ms(iters, [&] { linear_forward(x, w, Tensor(), y); });
      const double bx = median_ms(iters, [&] { linear_backward(dy, x, w, dx, none, none); });
      const double bw = median_ms(iters, [&] { linear_backward(dy, x, w, none, dw, none); });
      std::printf("%-9s | %6lld %6lld | %8.3f %7.1f | %8.3f %7.1f | %8.3f %7.1f\n", g.name,
                  static_cast<long long>(g.M), static_cast<long long>(g.K), f,
                  flops / f / 1e9, bx, flops / bx / 1e9, bw, flops / bw / 1e9);
    }
    // Attention at the model's head shapes.
    Tensor q = random_device({batch, T, H, d}, 4), k = random_device({batch, T, G, d}, 5),
           v = random_device({batch, T, G, d}, 6), dout = random_device({batch, T, H, d}, 7);
    Tensor out = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
    Tensor lse = Tensor::empty({batch, H, T}, DType::kF32, Device::kCUDA);
    Tensor dq = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
    Tensor dk = Tensor::empty(k.shape(), DType::kBF16, Device::kCUDA);
    Tensor dv = Tensor::empty(v.shape(), DType::kBF16, Device::kCUDA);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const double af = median_ms(iters, [&] { attention_forward(q, k, v, scale, out, lse); });
    const double ab =
        median_ms(iters, [&] { attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv); });
    const double fwd_flops = 4.0 * batch * H * d * (static_cast<double>(T) * (T + 1) / 2);
    std::printf(
        "cuDNN causal flash attention, batch %lld, T %lld, H %lld, G %lld, d %lld: "
        "fwd %.3f ms (%.1f TFLOP/s), bwd %.3f ms (%.1f TFLOP/s, counted as 2.5x fwd)%s\n\n",
        static_cast<long long>(batch), static_cast<long long>(T), static_cast<long long>(H),
        static_cast<long long>(G), static_cast<long long>(d), af, fwd_flops / af / 1e9, ab,
        2.5 * fwd_flops / ab / 1e9,
        deterministic() ? "; --deterministic: the backward is the fallback kernel's, "
                          "not cuDNN's (which sums dQ with f32 atomics)"
                        : "");
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace msa::bench
#endif  // MSA_HAS_CUDA
