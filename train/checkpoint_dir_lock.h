// One run per checkpoint directory. Two fresh runs started in the same --checkpoint_dir both
// passed the "already holds checkpoints" check before either had saved, then wrote their steps
// into each other's files (the later one moved the earlier one's aside as "did not validate"), and
// --keep_last pruned the other run's files: a later --resume silently continued the wrong run. The
// writing rank holds an exclusive flock(2) on <dir>/.msa-train.lock from before that check until
// the run ends (the kernel releases it when the process dies, so a killed run leaves no stale
// lock); a second run is refused naming the holder's pid.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace msa {

class CheckpointDirLock {
 public:
  // FailedPrecondition, naming the directory and the holder's pid, when another process holds it.
  // On a file system without flock support (some network mounts) a warning on stderr, and a lock
  // that holds nothing.
  static absl::StatusOr<std::unique_ptr<CheckpointDirLock>> acquire(const std::string& dir);
  ~CheckpointDirLock();
  CheckpointDirLock(const CheckpointDirLock&) = delete;
  CheckpointDirLock& operator=(const CheckpointDirLock&) = delete;

 private:
  explicit CheckpointDirLock(int fd) : fd_(fd) {}
  int fd_;  // -1: nothing held
};

}  // namespace msa
