// Context parallelism (DESIGN.md section 5, the all-gather CP of Llama 3): the cp ranks of one
// data-parallel replica each hold T / cp tokens of every sequence (cp_token_chunks): with the
// contiguous layout one shard [rank T / cp, (rank + 1) T / cp); with zig-zag (msa-train's
// default, balanced causal work) the chunks rank and 2 cp - 1 - rank of 2 cp. Everything but
// attention is per token and runs on the rank's tokens alone. Before each attention the ranks
// all-gather the keys and values (after RoPE) and, for MSA layers, the index keys; each rank then
// attends, selects and computes the index loss for its own queries over the keys [0, key_len),
// key_len the end of its last chunk (the kernels' fewer-queries-than-keys form,
// kernels/attention.h and kernels/msa.h). The backward returns each key's gradient to
// its owner: a reduce-scatter (sum) of dK, dV and the index-key gradient. Parameters are
// replicated over cp: their gradients are summed over dp x cp (ProcessGroups::gradient_group).
//
// Either device: on CUDA the collectives are NCCL's (bf16 key gradients are reduce-scattered in
// f32) and the kernels take the query offset (kernels/msa.h, kernels/attention.h).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/communicator.h"
#include "core/tensor.h"
#include "model/document_segments.h"
#include "model/model_config.h"

namespace msa {

// Where rank `rank` of `size` holds its local_T tokens of every sequence (of size * local_T):
// contiguous, the shard [rank local_T, (rank + 1) local_T); zig-zag, the halves rank and
// 2 size - 1 - rank of the sequence cut into 2 size chunks (an early and a late one, so every rank
// gets the same amount of the work that grows with the position: the indexer, dense attention).
std::vector<TokenChunk> cp_token_chunks(int rank, int size, bool zigzag, int64_t local_T);

struct ContextParallel {
  Communicator* comm = nullptr;  // the cp group (nullptr: no context parallelism)
  int rank = 0;
  int size = 1;
  bool zigzag = false;  // the layout of cp_token_chunks
  bool enabled() const { return size > 1; }
  // Position of this rank's first token in sequences of `local_T` tokens per rank.
  int64_t position_offset(int64_t local_T) const { return chunks(local_T).front().position; }
  // This rank's tokens of a row (one chunk, or two with zig-zag), in local order.
  std::vector<TokenChunk> chunks(int64_t local_T) const {
    return cp_token_chunks(rank, size, zigzag, local_T);
  }
  // Keys this rank's queries see: positions [0, key_len).
  int64_t key_len(int64_t local_T) const { return chunks(local_T).back().end(); }
};

// The cp group `comm` (may be nullptr) as a ContextParallel.
ContextParallel context_parallel_of(Communicator* comm, bool zigzag = false);

// Fails (naming --cp and --seq_len) unless cp >= 1, seq_len % cp == 0 and, with MSA layers,
// (seq_len / cp) % block_size == 0 (a shard holds whole blocks: the block grid stays global); with
// zig-zag the same for the half-shards (seq_len / 2 cp).
absl::Status check_context_parallel(const ModelConfig& config, int cp, int64_t seq_len,
                                    bool zigzag = false);

// local [batch, T/cp, ...] (this rank's shard) -> [batch, key_len, ...]: the tokens of every rank
// at positions [0, cp.key_len(T/cp)), in position order. Collective over cp (an all-gather).
// Without cp: `local` itself.
Tensor cp_gather_keys(const ContextParallel& cp, const Tensor& local);

// The adjoint of cp_gather_keys: grad [batch, key_len, ...] (this rank's queries' gradient for
// the keys it gathered) -> [batch, T/cp, ...], the sum over ranks of the gradients for this
// rank's tokens. Collective over cp (a reduce-scatter); f32 or f64, or bf16 (summed in
// f32). Without cp: `grad`.
Tensor cp_reduce_scatter_keys(const ContextParallel& cp, const Tensor& grad);

}  // namespace msa
