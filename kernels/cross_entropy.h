// Softmax cross-entropy over the vocabulary, mean over the tokens whose target != ignore_index.
#pragma once

#include "core/tensor.h"

namespace msa {

struct CrossEntropyResult {
  double loss = 0;          // mean over counted tokens (0 when none counted)
  int64_t n_counted = 0;    // tokens whose target != ignore_index
};

// logits [N, V], targets i32 [N]. lse [N] receives log-sum-exp of each row (for backward).
CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                         int ignore_index, Tensor& lse);

// dlogits [N, V] = dloss * (softmax(logits) - onehot(target)) / n_counted; ignored rows get 0.
// dlogits may alias logits (in place, to save the [N, V] buffer).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int ignore_index, int64_t n_counted, double dloss, Tensor& dlogits);

}  // namespace msa
