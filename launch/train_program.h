// The body of msa-train, separated from flag parsing so tests can run it in-process.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace msa {

struct TrainProgramOptions {
  ModelConfig model;
  std::string attention_spec = "msa";
  std::string device = "auto";
  std::string data = "synthetic:repeat";
  int64_t batch_size = 4;
  int64_t seq_len = 256;
  uint64_t seed = 1234;
  // --seed was given explicitly. On --resume the checkpoint's seed is used when it was not; when
  // it was and differs from the checkpoint's, the run is refused unless `reseed`.
  bool explicit_seed = false;
  bool explicit_rope_theta = false;  // --rope_theta given: must equal a loaded checkpoint's
  bool reseed = false;          // --resume with another --seed: samples from here on follow it
  // --resume with data flags (data, seq_len, val_fraction, pack_documents) that differ from the
  // checkpoint's run: accepted, the new data's samples from its first (else refused).
  bool new_data = false;
  int synthetic_pairs = 4;      // facts per sample of synthetic:kv-recall
  double synthetic_depth = -1;  // depth of the facts (< 0: random per sample)
  double val_fraction = 0.01;   // shards: fraction of windows held out for validation
  // Shards: each window's documents (split at the EOS id of the shards' metadata) are separate
  // sequences to attention, MSA selection, index loss and RoPE (model/document_segments.h).
  bool pack_documents = false;
  int64_t eval_every = 0;       // validation loss / perplexity every N steps (0: off)
  int64_t eval_batches = 8;
  std::string checkpoint_dir;    // where ckpt-<step>.h5 files go ("" = no checkpoints)
  int64_t checkpoint_every = 0;  // also at the end and on SIGTERM/SIGINT
  int64_t keep_last = 0;         // prune to the newest N checkpoints (0: keep all)
  bool resume = false;           // continue from the newest valid checkpoint in checkpoint_dir
  // resume when checkpoint_dir holds checkpoints, else start fresh (resolved into `resume` and
  // `init_from` at start: one command for the first launch and every relaunch)
  bool auto_resume = false;
  std::string init_from;         // load weights only from this checkpoint
  // The --init_from the run started from, resolved ("" from scratch), recorded in its
  // checkpoints (a resumed run keeps the checkpoint's; unset: a checkpoint from before the
  // record): --auto_resume resumes only the run of its --init_from.
  std::optional<std::string> started_from;
  std::string auto_resume_init_from;      // the --init_from of an --auto_resume that resumed
  bool init_allow_missing_index = false;  // init_from: index branch absent in the file is fresh
  // The Hugging Face source of the weights (hf_architecture, hf_dtype), from the checkpoint
  // loaded; recorded in the run's checkpoints for msa-convert --export_hf.
  std::map<std::string, std::string> source_model;
  // What --data reads beyond its name (BatchSource::data_identity), set once the source is open;
  // recorded in the run's checkpoints so that --resume notices changed shards.
  std::string data_identity;
  std::string data_metadata;  // BatchSource::data_metadata, compared on resume when both have it
  int64_t exit_after_step = 0;     // stop (with a checkpoint) after this step, as if preempted
  std::string metrics_jsonl;       // append one JSON line per step (full precision) to this file
  int tp = 1;                      // tensor-parallel size (world = dp x cp x tp)
  int cp = 1;                      // context-parallel size: each rank holds seq_len / cp tokens
  std::string cp_layout = "zigzag";  // or "contiguous" (model/context_parallel.h)
  bool zero1 = false;              // shard AdamW state over the data-parallel group
  int64_t bucket_mb = 25;          // data-parallel gradient all-reduce bucket size
  int gpu = -1;                    // CUDA device of this rank (< 0: node-local rank % device count)
  std::string recompute = "none";  // activation recomputation: none, attention or full
  // Bit-reproducible GPU runs (core/deterministic.h): fixed-order variants of the kernels that
  // otherwise sum in a run-dependent order; slower. CPU runs are deterministic either way.
  bool deterministic = false;
  // Refuse to start when the memory estimate (train/memory_estimate.h) exceeds the free memory
  // of the device (CUDA) or the node (CPU); false skips the check (the estimate is still logged).
  bool memory_check = true;
  // The index warm-up with dense attention (everything trains; DESIGN.md section 4, "Recipes"):
  // dense_attention_steps steps when >= 0, else ceil(dense_attention_fraction * steps). Runs after
  // trainer.index_warmup_steps (the frozen-backbone warm-up); models without MSA layers skip it.
  // Whatever trainer.dense_attention_steps holds is replaced by the resolved count.
  int64_t dense_attention_steps = -1;
  double dense_attention_fraction = 0.02;
  TrainerConfig trainer;
  OptimizerConfig optimizer;
};

// Validates the options (errors name the flag), checks that the run fits in memory, builds the
// model, data and optimizer, trains. Runs on every rank of MPI_COMM_WORLD (MPI must be
// initialized): world = dp x cp x tp.
absl::Status run_train_program(TrainProgramOptions options);

// A 64-bit flag value for an int field: the value, or InvalidArgument "invalid --<flag>: <v> is
// out of range (...)" when it does not fit, so values past 2^31 are refused, never wrapped.
absl::StatusOr<int> int_flag_value(const char* flag, int64_t value);

}  // namespace msa
