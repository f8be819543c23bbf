// Megatron-style tensor parallelism (DESIGN.md section 5): how a model is split over the tp ranks
// of one data-parallel replica, and the vocab-parallel embedding and cross entropy.
//
// Rank t of tp owns, in every layer, KV groups [t G/tp, (t+1) G/tp) with their query heads and
// their MSA index query heads (rows of W_IQ), FFN columns [t F/tp, (t+1) F/tp) and vocabulary rows
// [t V/tp, (t+1) V/tp). The MSA index key head W_IK is shared by all groups, so every rank holds
// it whole and computes the same index keys: selection needs no communication, and its gradient
// (each rank's groups' part) is summed over tp like the norms'. Every split is a contiguous range
// of dim 0 (TpSplit kRows) or dim 1 (kCols) of the full tensor; kReplicated tensors are whole on
// every rank.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/communicator.h"
#include "core/tensor.h"
#include "model/model_config.h"
#include "model/parameters.h"

namespace msa {

struct TensorParallel {
  Communicator* comm = nullptr;  // the tp group (nullptr: no tensor parallelism)
  int rank = 0;
  int size = 1;
  bool enabled() const { return size > 1; }
};

// The tp group `comm` of `groups`-like callers, as a TensorParallel (comm may be nullptr).
TensorParallel tensor_parallel_of(Communicator* comm);

// Fails (naming --tp) when tp does not divide n_kv_heads, ffn_dim or vocab_size.
absl::Status check_tensor_parallel(const ModelConfig& config, int tp);

// The config one rank's blocks compute with: n_heads, n_kv_heads and ffn_dim divided by tp.
ModelConfig local_block_config(const ModelConfig& config, int tp);

// The parameters one rank holds: model_param_specs with each shape divided along its split.
std::vector<ParamSpec> local_param_specs(const ModelConfig& config, int tp);

// The full shape of a rank's `local` shape under `split`.
Shape full_shape(const Shape& local, TpSplit split, int tp);

// Rank `rank`'s part of a full tensor (a new CPU tensor of the same dtype).
Tensor tp_slice(const Tensor& full, TpSplit split, int rank, int tp);

// The full tensor from every rank's part (collective over tp; CPU tensors in and out).
Tensor tp_gather(const Tensor& local, TpSplit split, Communicator* tp);

// The vocab-parallel ops run on the tensors' device (kernels/embedding.h, kernels/cross_entropy.h;
// CUDA: bf16 table and logits, f32 dtable and lse); nothing is staged through the host.
//
// Vocab-parallel embedding: out[i] = table[tokens[i] - vocab_begin] for the tokens this rank's
// rows hold, 0 for the others (the caller sums over tp). tokens i32 [N] hold global ids.
void vocab_parallel_embedding_forward(const Tensor& tokens, const Tensor& table,
                                      int64_t vocab_begin, Tensor& out);
// dtable accumulates dout's rows at the tokens this rank's rows hold.
void vocab_parallel_embedding_backward(const Tensor& dout, const Tensor& tokens,
                                       int64_t vocab_begin, Tensor& dtable);

struct VocabParallelCrossEntropy {
  double loss = 0;        // mean over counted tokens of the full-vocabulary cross entropy
  int64_t n_counted = 0;  // targets != ignore_index
};

// logits [N, V/tp]: this rank's vocabulary columns [vocab_begin, vocab_begin + V/tp). Writes the
// full-vocabulary log-sum-exp of each row into lse [N]. Collective over tp: an all-gather of the
// per-rank log-sum-exps and an all-reduce of the target logits, both [N] in lse's dtype and on
// its device (NCCL for CUDA tensors). The loss and the count are the only values read back by
// the host. Targets must be ignore_index or in [0, V) (checked), V = tp * V/tp. tp = nullptr: the
// cross entropy of this slice alone (a target outside it has target logit 0), targets below
// vocab_begin + V/tp.
VocabParallelCrossEntropy vocab_parallel_cross_entropy_forward(const Tensor& logits,
                                                               const Tensor& targets,
                                                               int64_t vocab_begin,
                                                               int ignore_index, Tensor& lse,
                                                               Communicator* tp);
// dlogits [N, V/tp] = dloss * (softmax(logits) - onehot(target)) / n_counted on this rank's
// columns; may alias logits. No communication.
void vocab_parallel_cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                           const Tensor& lse, int64_t vocab_begin, int ignore_index,
                                           int64_t n_counted, double dloss, Tensor& dlogits);

}  // namespace msa
