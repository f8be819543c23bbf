// CPU reference linear layer and elementwise helpers (contracts in kernels/matmul.h).
// Raw row-major buffers; T is float or double.
#pragma once

#include <cstdint>

namespace msa::cpu {

// C[I, J] += A[I, P] B[P, J]. Each C element adds its P products in the order p = 0, 1, ..., so
// the result is the plain triple loop's, bit for bit, for any tiling or thread count.
template <class T>
void matmul_accumulate(T* c, const T* a, const T* b, int64_t I, int64_t P, int64_t J);

// y [N, M] = x [N, K] w[M, K]^T + bias [M] (bias may be null).
template <class T>
void linear_forward(const T* x, const T* w, const T* bias, T* y, int64_t N, int64_t K, int64_t M);

// dx [N, K] = dy w (overwritten; += when dx_accumulate); dw [M, K] += dy^T x; dbias [M] +=
// column sums of dy. Each of dx, dw, dbias may be null (skipped).
template <class T>
void linear_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* dbias, int64_t N,
                     int64_t K, int64_t M, bool dx_accumulate = false);

template <class T>
void add(const T* a, const T* b, T* out, int64_t n);  // out = a + b (out may be a or b)
template <class T>
void scale_inplace(T* y, T a, int64_t n);  // y *= a

}  // namespace msa::cpu
