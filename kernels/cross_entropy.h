// Softmax cross-entropy over the vocabulary, mean over the tokens whose target != ignore_index.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace msa {

struct CrossEntropyResult {
  double loss = 0;        // mean over counted tokens (0 when none counted)
  int64_t n_counted = 0;  // tokens whose target != ignore_index
};

// logits [N, V], targets i32 [N]. lse [N] receives log-sum-exp of each row (for backward).
CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                         int ignore_index, Tensor& lse);

// dlogits [N, V] = dloss * (softmax(logits) - onehot(target)) / n_counted; ignored rows get 0.
// dlogits may alias logits (in place, to save the [N, V] buffer).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int ignore_index, int64_t n_counted, double dloss, Tensor& dlogits);

// Vocabulary-parallel cross entropy (model/tensor_parallel.h): logits [N, V] hold the columns
// [vocab_begin, vocab_begin + V) of a vocabulary split into S slices. The forward is two steps
// around the caller's exchange between the slices (an all-gather of slice_lse, an all-reduce of
// target_logit); nothing but the loss and the count reaches the host.
//
// Step 1: slice_lse [N] = this slice's log-sum-exp of each row; target_logit [N] =
// logits[n, targets[n] - vocab_begin] when the target falls in the slice, else 0 (so the sum over
// the slices is every row's target logit). Targets are global ids (checked in step 2).
void cross_entropy_slice_forward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                 Tensor& slice_lse, Tensor& target_logit);
// Step 2: all_lse [S, N] = every slice's slice_lse (slice-major, as an all-gather leaves them),
// target_logit [N] summed over the slices. lse [N] receives the full vocabulary's log-sum-exp
// (for the backward); returns the loss as cross_entropy_forward does. Targets must be in
// [0, vocab_size) or ignore_index.
CrossEntropyResult cross_entropy_combine(const Tensor& all_lse, const Tensor& target_logit,
                                         const Tensor& targets, int64_t vocab_size,
                                         int ignore_index, Tensor& lse);
// cross_entropy_backward on a slice: lse is step 2's; the one-hot term only where the target
// falls in [vocab_begin, vocab_begin + V). No communication; dlogits may alias logits.
void cross_entropy_slice_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                  int64_t vocab_begin, int ignore_index, int64_t n_counted,
                                  double dloss, Tensor& dlogits);

}  // namespace msa
