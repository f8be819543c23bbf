// Calls a kernel body with the C++ type of a CPU floating tensor (float or double).
#pragma once

#include "core/check.h"
#include "core/tensor.h"

namespace msa::cpu {

// fn(T{}) with T = float for f32, double for f64; other dtypes abort naming `op`.
template <class Fn>
void dispatch_floating(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      fn(float{});
      return;
    case DType::kF64:
      fn(double{});
      return;
    default:
      MSA_CHECK(false, "%s: CPU kernels take f32 or f64 tensors, got %s", op, dtype_name(dtype));
  }
}

}  // namespace msa::cpu
