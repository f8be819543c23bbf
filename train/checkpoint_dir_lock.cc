#include "train/checkpoint_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace msa {

absl::StatusOr<std::unique_ptr<CheckpointDirLock>> CheckpointDirLock::acquire(
    const std::string& dir) {
  const std::string path = dir + "/.msa-train.lock";
  // 0666 under the umask, as the checkpoints: a group sharing the directory can resume. A lock
  // file someone else made and this user cannot write is still lockable read-only (flock needs
  // no write access; only the pid note is skipped).
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0 && errno == EACCES) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --checkpoint_dir: cannot create its lock file '%s': %s", path,
                        std::strerror(errno)));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    if (error == EWOULDBLOCK) {
      char buf[32] = {0};
      const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
      ::close(fd);
      int64_t pid = 0;
      const bool known = n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(buf), &pid);
      return absl::FailedPreconditionError(absl::StrFormat(
          "--checkpoint_dir=%s is in use by another msa-train run%s (it holds %s): give another "
          "directory, or wait for that run to end (two runs would write over each other's "
          "checkpoints)",
          dir, known ? absl::StrFormat(" (pid %d)", pid) : "", path));
    }
    ::close(fd);
    std::fprintf(stderr,
                 "msa-train: warning: cannot lock '%s' (%s): nothing stops another run from "
                 "writing into --checkpoint_dir=%s at the same time\n",
                 path.c_str(), std::strerror(error), dir.c_str());
    return std::unique_ptr<CheckpointDirLock>(new CheckpointDirLock(-1));
  }
  // The holder's pid, for the message of a run refused while it lives.
  const std::string pid = absl::StrFormat("%d\n", static_cast<int>(::getpid()));
  // Best effort: the lock holds without it, and a refused run's message then names no pid.
  const bool written = ::ftruncate(fd, 0) == 0 &&
                       ::pwrite(fd, pid.data(), pid.size(), 0) == static_cast<ssize_t>(pid.size());
  (void)written;
  return std::unique_ptr<CheckpointDirLock>(new CheckpointDirLock(fd));
}

CheckpointDirLock::~CheckpointDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

}  // namespace msa
