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

// logits hold the columns [vocab_begin, vocab_begin + V) of the vocabulary. dlogits [N, V] =
// dloss / n_counted * (softmax - onehot) on counted rows, the one-hot only where the target falls
// in the columns; 0 on ignored rows (0 everywhere when n_counted == 0). dlogits may equal logits.
// Targets are checked to be >= 0 or ignore_index (the forward checked their upper bound).
template <class T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, int64_t N,
                            int64_t V, int64_t vocab_begin, int ignore_index, int64_t n_counted,
                            double dloss, T* dlogits);

// Vocabulary slices (kernels/cross_entropy.h): slice_lse [N] = each row's log-sum-exp over the
// slice's V columns, target_logit [N] = logits[n, targets[n] - vocab_begin] when that column is
// in the slice, else 0.
template <class T>
void cross_entropy_slice_forward(const T* logits, const int32_t* targets, T* slice_lse,
                                 T* target_logit, int64_t N, int64_t V, int64_t vocab_begin);

// all_lse [S, N] (slice-major), target_logit [N] summed over slices: writes lse [N] (the whole
// vocabulary's), returns the sum over counted rows of lse - target_logit and stores their number
// in *n_counted. Targets must be in [0, vocab_size) or ignore_index (checked).
template <class T>
double cross_entropy_combine(const T* all_lse, const T* target_logit, const int32_t* targets,
                             T* lse, int64_t S, int64_t N, int64_t vocab_size, int ignore_index,
                             int64_t* n_counted);

}  // namespace msa::cpu
