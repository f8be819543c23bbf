// Rotary position embedding (math in kernels/cpu/rope.cc, contract in kernels/rope.h). One thread
// per (token, k), k < d/2, the token (batch, t) at position position_offset + t: k < n_pairs
// rotates the pair (k, k + n_pairs) of each of the token's head rows; the other threads copy two
// pass-through dims of [2 n_pairs, d) (partial rotary), unless the rotation is in place. The
// inverse-frequency table (computed on the host in double by rope_inv_freq) travels as a kernel
// argument, so there is no device buffer to manage; the angle p f_k and its sine and cosine are
// formed in double, as the CPU reference does: at p ~ 10^5 a float angle has lost the phase. bf16
// in and out, f32 arithmetic otherwise.
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {
namespace {

constexpr int64_t kMaxPairs = 256;  // kRopeMaxCudaPairs (kernels/rope.h)

struct RopeFreqs {
  double f[kMaxPairs];
};

// One thread per (token, k): the double-precision sine and cosine of the token's angle are formed
// once and applied to every head of the token (16x fewer sincos at 16 heads than a thread per
// row; the double sincos, not the memory, was the kernel's cost).
__global__ void rope_kernel(const bf16* x, bf16* y, int64_t tokens, int64_t T, int64_t heads,
                            int64_t d, int64_t n_pairs, int64_t position_offset,
                            const RopeFreqs freqs, bool inverse) {
  const int64_t half_d = d / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < tokens * half_d; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t token = i / half_d, k = i % half_d;
    if (k < n_pairs) {
      const int64_t p = position_offset + token % T;
      double s, c;
      sincos(static_cast<double>(p) * freqs.f[k], &s, &c);
      const float cf = static_cast<float>(c), sf = static_cast<float>(inverse ? -s : s);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (token * heads + h) * d;
        const float x1 = load_f(x, base + k), x2 = load_f(x, base + k + n_pairs);
        store_f(y, base + k, x1 * cf - x2 * sf);
        store_f(y, base + k + n_pairs, x2 * cf + x1 * sf);
      }
    } else if (x != y) {
      const int64_t j = 2 * n_pairs + 2 * (k - n_pairs);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (token * heads + h) * d;
        y[base + j] = x[base + j];
        y[base + j + 1] = x[base + j + 1];
      }
    }
  }
}

}  // namespace

void rope_rotate(const Tensor& x, const std::vector<double>& inv_freq, bool inverse,
                 int64_t position_offset, Tensor& y) {
  const int64_t batch = x.size(0), T = x.size(1), heads = x.size(2), d = x.size(3);
  const int64_t rows = batch * T * heads, n_pairs = static_cast<int64_t>(inv_freq.size());
  MSA_CHECK(n_pairs >= 1 && n_pairs <= kMaxPairs && 2 * n_pairs <= d,
            "rope_rotate (CUDA): %d frequency pairs for head dim %d (at most %d pairs)", n_pairs, d,
            kMaxPairs);
  if (rows == 0) return;
  RopeFreqs freqs{};
  for (int64_t k = 0; k < n_pairs; ++k) freqs.f[k] = inv_freq[k];
  const int64_t tokens = batch * T;
  rope_kernel<<<grid_blocks(tokens * (d / 2)), 256>>>(x.data<bf16>(), y.data<bf16>(), tokens, T,
                                                      heads, d, n_pairs, position_offset, freqs,
                                                      inverse);
  MSA_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace msa::cuda
