// Context parallelism (DESIGN.md section 5, the all-gather CP of Llama 3): the cp ranks of one
// data-parallel replica each hold a contiguous shard of every sequence, T / cp tokens, at
// positions [p0, p0 + T / cp) with p0 = rank * T / cp. Everything but attention is per token and
// runs on the shard alone. Before each attention the ranks all-gather the keys and values (after
// RoPE) and, for MSA layers, the index keys; each rank then attends, selects and computes the
// index loss for its own queries over the keys [0, p0 + T / cp) (the kernels' fewer-queries-than-
// keys form, kernels/attention.h and kernels/msa.h). The backward returns each key's gradient to
// its owner: a reduce-scatter (sum) of dK, dV and the index-key gradient. Parameters are
// replicated over cp: their gradients are summed over dp x cp (ProcessGroups::gradient_group).
//
// Either device: on CUDA the collectives are NCCL's (bf16 key gradients are reduce-scattered in
// f32) and the kernels take the query offset (kernels/msa.h, kernels/attention.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/communicator.h"
#include "core/tensor.h"
#include "model/model_config.h"

namespace msa {

struct ContextParallel {
  Communicator* comm = nullptr;  // the cp group (nullptr: no context parallelism)
  int rank = 0;
  int size = 1;
  bool enabled() const { return size > 1; }
  // Position of this rank's first token in sequences of `local_T` tokens per rank.
  int64_t position_offset(int64_t local_T) const { return rank * local_T; }
};

// The cp group `comm` (may be nullptr) as a ContextParallel.
ContextParallel context_parallel_of(Communicator* comm);

// Fails (naming --cp and --seq_len) unless cp >= 1, seq_len % cp == 0 and, with MSA layers,
// (seq_len / cp) % block_size == 0 (a shard holds whole blocks: the block grid stays global).
absl::Status check_context_parallel(const ModelConfig& config, int cp, int64_t seq_len);

// local [batch, T/cp, ...] (this rank's shard) -> [batch, (rank + 1) T/cp, ...]: the tokens of
// every rank up to the end of this one's shard, in position order. Collective over cp (an
// all-gather). Without cp: `local` itself.
Tensor cp_gather_keys(const ContextParallel& cp, const Tensor& local);

// The adjoint of cp_gather_keys: grad [batch, (rank + 1) T/cp, ...] (this rank's queries'
// gradient for the keys it gathered) -> [batch, T/cp, ...], the sum over ranks of the gradients
// for this rank's tokens. Collective over cp (a reduce-scatter); f32 or f64, or bf16 (summed in
// f32). Without cp: `grad`.
Tensor cp_reduce_scatter_keys(const ContextParallel& cp, const Tensor& grad);

}  // namespace msa
