// CPU reference SwiGLU gate (contract in kernels/swiglu.h). T is float or double.
#pragma once

#include <cstdint>

namespace msa::cpu {

// out[i] = silu(gate[i]) * up[i] over n elements.
template <class T>
void swiglu_forward(const T* gate, const T* up, T* out, int64_t n);

// dgate, dup overwritten.
template <class T>
void swiglu_backward(const T* dout, const T* gate, const T* up, T* dgate, T* dup, int64_t n);

}  // namespace msa::cpu
