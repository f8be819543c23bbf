// All three products of a linear layer go through one kernel, matmul_accumulate, written in
// "axpy" form (C row += a[i, p] * B row p) so the inner loop runs over contiguous memory and
// vectorizes without reordering any sum. The forward and dw transpose one operand first to get
// that form; a transpose is O(size), negligible next to the O(N K M) product.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace msa::cpu {
namespace {

// Rows of C per task, and columns per tile: a kTileJ-wide strip of B (P x kTileJ) stays in cache
// while kTileI rows of C use it.
constexpr int64_t kTileI = 16;
constexpr int64_t kTileJ = 256;

template <class T>
std::vector<T> transpose(const T* src, int64_t rows, int64_t cols) {
  std::vector<T> dst(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
  return dst;
}

}  // namespace

template <class T>
void matmul_accumulate(T* c, const T* a, const T* b, int64_t I, int64_t P, int64_t J) {
  const int64_t n_tiles = (I + kTileI - 1) / kTileI;
  parallel_for(n_tiles, kTileI * P * J, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t i0 = tile * kTileI, i1 = std::min(I, i0 + kTileI);
      for (int64_t j0 = 0; j0 < J; j0 += kTileJ) {
        const int64_t j1 = std::min(J, j0 + kTileJ);
        for (int64_t i = i0; i < i1; ++i) {
          T* c_row = c + i * J;
          const T* a_row = a + i * P;
          for (int64_t p = 0; p < P; ++p) {
            const T a_ip = a_row[p];
            const T* b_row = b + p * J;
            for (int64_t j = j0; j < j1; ++j) c_row[j] += a_ip * b_row[j];
          }
        }
      }
    }
  });
}

template <class T>
void linear_forward(const T* x, const T* w, const T* bias, T* y, int64_t N, int64_t K, int64_t M) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t m = 0; m < M; ++m) y[n * M + m] = T(0);
  }
  const std::vector<T> wt = transpose(w, M, K);  // [K, M]
  matmul_accumulate(y, x, wt.data(), N, K, M);
  if (bias) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t m = 0; m < M; ++m) y[n * M + m] += bias[m];
    }
  }
}

template <class T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* dbias, int64_t N,
                     int64_t K, int64_t M, bool dx_accumulate) {
  if (dx && dx_accumulate) {
    // The product first, then one add per element: the same rounding as a separate
    // linear_backward and add_inplace, so the CPU reference's results do not move.
    std::vector<T> fresh(static_cast<size_t>(N * K), T(0));
    matmul_accumulate(fresh.data(), dy, w, N, M, K);
    add(dx, fresh.data(), dx, N * K);
  } else if (dx) {
    std::fill(dx, dx + N * K, T(0));
    matmul_accumulate(dx, dy, w, N, M, K);  // dx [N, K] = dy [N, M] w [M, K]
  }
  if (dw) {
    const std::vector<T> dyt = transpose(dy, N, M);  // [M, N]
    matmul_accumulate(dw, dyt.data(), x, M, N, K);   // dw [M, K] += dy^T [M, N] x [N, K]
  }
  if (dbias) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t m = 0; m < M; ++m) dbias[m] += dy[n * M + m];
    }
  }
}

template <class T>
void add(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <class T>
void scale_inplace(T* y, T a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

#define MSA_INSTANTIATE(T)                                                                      \
  template void matmul_accumulate<T>(T*, const T*, const T*, int64_t, int64_t, int64_t);        \
  template void linear_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t); \
  template void linear_backward<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t,  \
                                   int64_t, bool);                                              \
  template void add<T>(const T*, const T*, T*, int64_t);                                        \
  template void scale_inplace<T>(T*, T, int64_t);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
