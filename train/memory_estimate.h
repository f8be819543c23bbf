// How much memory one rank of a training run needs, computed from the flags before anything is
// allocated, so that a run that cannot fit is refused with the numbers instead of dying in an
// allocation minutes later (issue 18).
//
// The estimate counts what the code allocates (model/transformer.cc, model/attention_block.cc,
// model/mlp_block.cc, train/optimizer.cc), not an upper bound: allocator rounding, library
// workspaces (cuBLASLt, cuDNN, NCCL), the MSA kernels' per-chunk buffers and the CUDA fallback's
// selection mask are left out, so a run it refuses cannot fit, and a run it accepts may still need
// a little more.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "model/model_config.h"
#include "model/transformer.h"

namespace msa {

struct MemoryEstimateOptions {
  ModelConfig model;       // with its per-layer attention kinds resolved
  int64_t batch_size = 1;  // sequences per micro-batch on this data-parallel rank
  int64_t seq_len = 1;
  int tp = 1;  // tensor-parallel size: heads, kv heads, ffn and vocabulary split tp ways
  // The gradient group's size (data x context parallel): ZeRO-1 shards over it; without ZeRO-1
  // a group of more than one adds the all-reduce buckets.
  int dp = 1;
  // Context-parallel size: seq_len is then a rank's shard, and each attention layer also holds the
  // keys and values gathered from the whole sequence (the worst rank's: all of them).
  int cp = 1;
  bool zero1 = false;
  // CUDA: bf16 weights and activations, f32 gradients, f32 masters. CPU: f32 throughout, and the
  // weights are their own masters.
  bool cuda = false;
  Recompute recompute = Recompute::kNone;
};

// Bytes on one rank. Sizes are doubles so that absurd flag values give absurd (not wrapped) sizes.
struct MemoryEstimate {
  int64_t parameter_count = 0;  // parameters this rank holds (its tp part), exactly
  double parameters = 0;        // the weights computed with
  double gradients = 0;
  double optimizer = 0;    // AdamW moments, fp32 masters (CUDA), ZeRO-1 shards
  double activations = 0;  // kept from the forward for the backward, per the recompute mode
  double workspace = 0;    // transient: one layer's backward (and recomputation), MSA index buffers

  double total() const { return parameters + gradients + optimizer + activations + workspace; }
  // "5.21 GiB (parameters 512.0 MiB, gradients 1.00 GiB, optimizer 3.00 GiB, activations ...)"
  std::string describe() const;
};

// Pure: the same options give the same estimate. Activations and workspace grow linearly in
// batch_size x seq_len (attention keeps no T x T matrix).
MemoryEstimate estimate_training_memory(const MemoryEstimateOptions& options);

// A forward pass without gradients (evaluation) of batch_size sequences of seq_len tokens: the
// weights and the largest of what one layer holds at a time (its attention or MLP block beside
// the residual stream, with the MSA index buffers) and what the head holds (the logits); recompute,
// dp and zero1 are ignored. A lower bound of what msa-eval allocates, so a length it refuses cannot
// fit.
MemoryEstimate estimate_inference_memory(const MemoryEstimateOptions& options);

// OK when estimate.total() * ranks_sharing <= available_bytes (ranks_sharing: how many ranks draw
// from the same memory, e.g. the processes of one node on the CPU). Otherwise ResourceExhausted:
// "needs ~X GiB on <where>, Y GiB free; try ..." with what could make it fit.
absl::Status check_memory_fits(const MemoryEstimate& estimate, const MemoryEstimateOptions& options,
                               double available_bytes, int ranks_sharing, const std::string& where);

// Bytes as "12.34 GiB", or "56.7 MiB" below 1 GiB.
std::string memory_string(double bytes);

}  // namespace msa
