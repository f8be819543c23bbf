// HDF5 checkpoints (DESIGN.md section 6; the layout is documented in
// docs/checkpoint.md).
//
//   /config             attributes: model (ModelConfig JSON), run (training
//   options JSON), format_version, fnv1a64 (of the three, each followed by a NUL;
//   absent in files of earlier builds)
//   /params/<name>      full fp32 master weights, unsharded (any dp/tp layout
//   can load them) /optimizer/<name>/m, /optimizer/<name>/v   AdamW moments
//   (fp32) /state/<field>      int64 scalars: step, tokens_seen, seed,
//   sample_cursor, lr_step
// Every dataset carries an attribute `fnv1a64`: the FNV-1a 64-bit hash of its
// little-endian bytes. A reader validates structure, dtypes, shapes and every
// checksum before it returns, so a bad file never touches the model or
// optimizer state.
//
// Files are written to a temporary file beside them (`<path>.tmp` in a run's own directory; see
// save_checkpoint), flushed to disk and renamed, so a crash
// mid-write leaves the previous checkpoints untouched; pruning (--keep_last)
// runs only after the rename.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/model_config.h"

namespace msa {

struct TrainState {
  int64_t step = 0;           // optimizer steps completed
  int64_t tokens_seen = 0;    // training tokens consumed (all ranks)
  int64_t seed = 0;           // the run's seed (every RNG stream derives from it and a counter)
  int64_t sample_cursor = 0;  // the next data sample number (data/window_sampler.h)
  int64_t lr_step = 0;        // position in the LR schedule
  // Non-finite (skipped) steps in a row ending at `step`: a run resumed from a checkpoint written
  // after one stops where the uninterrupted run would (--max_nonfinite_steps). Files without it
  // (written before it was recorded) read 0.
  int64_t nonfinite_in_a_row = 0;
  // Non-finite (skipped) steps up to `step`, and those of them in the frozen-backbone index
  // warm-up: Adam's bias correction counts the updates a parameter received, which skipped steps
  // gave none (a resumed run counts on). Files without them read 0.
  int64_t skipped_steps = 0;
  int64_t skipped_warmup_steps = 0;
};

struct Checkpoint {
  ModelConfig config;
  std::string run_json;                  // the training options that wrote it (informational)
  std::map<std::string, Tensor> params;  // f32 CPU
  std::map<std::string, Tensor> m, v;    // f32 CPU; empty when loaded weights-only
  TrainState state;
};

// Writes `ckpt` to `path` (via a temporary file, synced, then moved into place). Every parameter
// of ckpt.config must be in params (and in m, v unless both are empty). A tensor holding a NaN or
// an infinity is refused (FailedPrecondition, naming it) before anything is written.
// replace = true (a run's own checkpoint directory): through `path`.tmp, replacing `path`.
// replace = false (msa-convert's --output): through a uniquely named, exclusively created
// temporary file, and `path` is never replaced, also when it appears during the write
// (core/file_publish.h).
absl::Status save_checkpoint(const std::string& path, const Checkpoint& ckpt, bool replace = true);

// Reads and validates a checkpoint; with weights_only the optimizer group is
// not read. A parameter or moment holding a NaN or an infinity is refused (DataLoss, naming the
// file and the dataset). A file from before the paper's shared index key head (an MSA layer's
// index_wk of [G * d_I, D] with G > 1) is refused as FailedPrecondition, saying
// why and naming the file and dataset.
absl::StatusOr<Checkpoint> load_checkpoint(const std::string& path, bool weights_only = false);

// What a checkpoint is without its tensors: its model and the options of the run that wrote it
// (the /config group, validated as load_checkpoint validates it), for choices made before the
// weights are read.
struct CheckpointHeader {
  ModelConfig config;
  std::string run_json;
};
absl::StatusOr<CheckpointHeader> read_checkpoint_header(const std::string& path);

// <dir>/ckpt-<step, 8 digits>.h5
std::string checkpoint_path(const std::string& dir, int64_t step);

// load_checkpoint, and the file's /state/step must be `step` (the one its name says): a
// checkpoint copied or renamed to another step's name is refused (DataLoss), so that resuming
// and --keep_last never take it for that step.
absl::StatusOr<Checkpoint> load_checkpoint_of_step(const std::string& path, int64_t step);

// The steps of the files in `dir` named as checkpoint_path names them (ckpt-<8+ digits>.h5; not
// *.tmp, not "ckpt-6.h5"), newest first.
std::vector<int64_t> list_checkpoint_steps(const std::string& dir);

struct LatestCheckpoint {
  std::string path;
  Checkpoint checkpoint;
};
// The newest checkpoint in `dir` that loads and validates (load_checkpoint_of_step); invalid ones
// are skipped with a warning on stderr. NotFound when there is none.
absl::StatusOr<LatestCheckpoint> load_latest_checkpoint(const std::string& dir);

// --keep_last retention: deletes only what is provably superseded. `newest_valid` is the step of
// the newest checkpoint this run wrote and validated (its file must load). Then:
//  - a file with a step above newest_valid is never deleted (whatever it holds: a corrupt file or
//    an older, longer run's checkpoint is never the reason this run's files go);
//  - of the files at or below newest_valid, newest first, the first `keep_last` that load and
//    validate are kept (newest_valid itself is always one of them), the valid ones after those are
//    deleted, and a file that does not validate is neither counted nor deleted.
// `known_valid` (optional) caches the steps known to validate: they are not read again, and steps
// found valid are added. keep_last <= 0: keeps all. Refuses (deleting nothing) when the file at
// newest_valid does not validate.
absl::Status prune_checkpoints(const std::string& dir, int keep_last, int64_t newest_valid,
                               std::set<int64_t>* known_valid = nullptr);

// OK when every value of every tensor is finite; otherwise an error naming the first tensor that
// holds a NaN or an infinity, as prefix + name + suffix (e.g. "/optimizer/" + name + "/m").
absl::Status check_finite(const std::map<std::string, Tensor>& tensors, const std::string& prefix,
                          const std::string& suffix = "");

// Test hook: when the environment variable MSA_TEST_CRASH_BEFORE_RENAME is set,
// save_checkpoint kills its own process (SIGKILL) after the temporary file is
// complete, before the rename.
inline constexpr char kCrashBeforeRenameEnv[] = "MSA_TEST_CRASH_BEFORE_RENAME";

}  // namespace msa
