// CPU reference softmax cross-entropy (contract in kernels/cross_entropy.h). T is float or double.
#pragma once

#include <cstdint>

namespace msa::cpu {

// logits [N, V], targets [N] (each in [0, V) or == ignore_index; checked). Writes lse [N] for
// every row (ignored ones too), returns the sum over counted rows of lse - logit[target] and
// stores their number in *n_counted.
template <class T>
double cross_entropy_forward(const T* logits, const int32_t* targets, T* lse, int64_t N, int64_t V,
                             int ignore_index, int64_t* n_counted);

// dlogits [N, V] = dloss / n_counted * (softmax - onehot) on counted rows, 0 on ignored rows
// (0 everywhere when n_counted == 0). dlogits may equal logits.
template <class T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, int64_t N,
                            int64_t V, int ignore_index, int64_t n_counted, double dloss,
                            T* dlogits);

}  // namespace msa::cpu
