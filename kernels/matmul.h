// Linear layers: y = x W^T (+ b), W stored [out, in] as in PyTorch / Hugging Face.
#pragma once

#include "core/tensor.h"

namespace msa {

// x [N, K], w [M, K], bias [M] or undefined, y [N, M].
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);

// How linear_backward writes dx: overwritten, or added to what dx holds. Projections that share
// an input (q/k/v, gate/up) sum their input gradients inside the GEMMs (beta = 1 on the GPU)
// instead of in separate elementwise passes.
enum class DxWrite { kOverwrite, kAccumulate };

// dy [N, M]. dx [N, K] is overwritten or accumulated into (dx_write; skipped if undefined);
// dw [M, K] and dbias [M] accumulate (each skipped if undefined).
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw,
                     Tensor& dbias, DxWrite dx_write = DxWrite::kOverwrite);

// Elementwise helpers used by the model: y += x (same shape), out = a + b (same shapes; out may
// be a or b), and y = a * x (scale in place).
void add_inplace(Tensor& y, const Tensor& x);
void add(const Tensor& a, const Tensor& b, Tensor& out);
void scale_inplace(Tensor& y, double a);

}  // namespace msa
