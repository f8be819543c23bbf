// CPU reference AdamW step and sum of squares (contract in kernels/adamw.h). T is float or double.
#pragma once

#include <cstdint>

#include "kernels/adamw.h"

namespace msa::cpu {

template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWHyper& h);

// Accumulated in double, in index order.
template <class T>
double sum_of_squares(const T* x, int64_t n);

}  // namespace msa::cpu
