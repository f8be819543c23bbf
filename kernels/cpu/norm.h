// CPU reference RMSNorm (contract in kernels/norm.h). Raw row-major buffers; T is float or double.
#pragma once

#include <cstdint>

namespace msa::cpu {

// y [N, D] = x * rstd * w, rstd [N] = 1 / sqrt(mean(x^2) + eps).
template <class T>
void rmsnorm_forward(const T* x, const T* w, double eps, T* y, T* rstd, int64_t N, int64_t D);

// dx [N, D] overwritten, plus residual [N, D] when not null (dx may be residual); dw [D]
// accumulates (skipped if null).
template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, const T* residual, T* dx,
                      T* dw, int64_t N, int64_t D);

}  // namespace msa::cpu
