// Rotary position embedding (math in kernels/cpu/rope.cc, contract in kernels/rope.h). One thread
// per (row, k), k < d/2, row = (batch, token, head) at position position_offset + token: k < n_pairs rotates the pair
// (k, k + n_pairs) of the row; the other threads copy two pass-through dims of [2 n_pairs, d)
// (partial rotary), unless the rotation is in place. The inverse-frequency table (computed on the
// host in double by rope_inv_freq) travels as a kernel argument, so there is no device buffer to
// manage; the angle p f_k and its sine and cosine are formed in double, as the CPU reference does:
// at p ~ 10^5 a float angle has lost the phase. bf16 in and out, f32 arithmetic otherwise.
#include "kernels/cuda/dense_cuda.h"
#include "kernels/cuda/device_math.cuh"

namespace msa::cuda {
namespace {

constexpr int64_t kMaxPairs = 256;  // kRopeMaxCudaPairs (kernels/rope.h)

struct RopeFreqs {
  double f[kMaxPairs];
};

__global__ void rope_kernel(const bf16* x, bf16* y, int64_t rows, int64_t T, int64_t heads,
                            int64_t d, int64_t n_pairs, int64_t position_offset,
                            const RopeFreqs freqs, bool inverse) {
  const int64_t half_d = d / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * half_d;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / half_d, k = i % half_d;
    const int64_t base = row * d;
    if (k < n_pairs) {
      const int64_t p = position_offset + (row / heads) % T;
      double s, c;
      sincos(static_cast<double>(p) * freqs.f[k], &s, &c);
      const float cf = static_cast<float>(c), sf = static_cast<float>(inverse ? -s : s);
      const float x1 = load_f(x, base + k), x2 = load_f(x, base + k + n_pairs);
      store_f(y, base + k, x1 * cf - x2 * sf);
      store_f(y, base + k + n_pairs, x2 * cf + x1 * sf);
    } else if (x != y) {
      const int64_t j = 2 * n_pairs + 2 * (k - n_pairs);
      y[base + j] = x[base + j];
      y[base + j + 1] = x[base + j + 1];
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
  rope_kernel<<<grid_blocks(rows * (d / 2)), 256>>>(x.data<bf16>(), y.data<bf16>(), rows, T, heads,
                                                    d, n_pairs, position_offset, freqs,
                                                    inverse);
  MSA_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace msa::cuda
