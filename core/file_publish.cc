#include "core/file_publish.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"

namespace msa {
namespace {

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

absl::Status exists_error(const std::string& path) {
  return absl::FailedPreconditionError(absl::StrFormat(
      "'%s' exists (it appeared while it was being written, or is a dangling link); it was not "
      "replaced",
      path));
}

// Moves `tmp` to `path` unless `path` exists: atomically with renameat2(RENAME_NOREPLACE), else
// with a hard link (which never replaces either), else, on file systems with neither, an
// existence check then a rename (racy: the one case where a file appearing in between is lost).
absl::Status move_no_replace(const std::string& tmp, const std::string& path) {
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0)
    return absl::OkStatus();
  if (errno == EEXIST) return exists_error(path);
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP && errno != ENOTSUP)
    return absl::InternalError(
        absl::StrFormat("%s: rename to %s failed: %s", tmp, path, std::strerror(errno)));
  if (::link(tmp.c_str(), path.c_str()) == 0) {
    ::unlink(tmp.c_str());
    return absl::OkStatus();
  }
  if (errno == EEXIST) {
    // NFS may answer a retried link that did succeed with EEXIST.
    if (same_file(tmp, path)) {
      ::unlink(tmp.c_str());
      return absl::OkStatus();
    }
    return exists_error(path);
  }
  if (errno != EPERM && errno != EOPNOTSUPP && errno != ENOTSUP && errno != ENOSYS)
    return absl::InternalError(
        absl::StrFormat("%s: link to %s failed: %s", tmp, path, std::strerror(errno)));
  if (struct stat st; ::lstat(path.c_str(), &st) == 0) return exists_error(path);
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return absl::InternalError(
        absl::StrFormat("%s: rename to %s failed: %s", tmp, path, std::strerror(errno)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> create_temp_beside(const std::string& path) {
  // Not mkstemp: its 0600 would stay the published file's mode. open(O_EXCL) with 0666 gives the
  // mode (umask, default ACLs) a plain create of `path` would have.
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  uint64_t seed =
      static_cast<uint64_t>(::getpid()) ^
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  try {
    std::random_device device;
    seed ^= (static_cast<uint64_t>(device()) << 32) ^ device();
  } catch (const std::exception&) {  // no entropy source: the pid and the clock still differ
  }
  std::mt19937_64 rng(seed);
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string name = path + ".tmp.";
    for (int i = 0; i < 8; ++i) name += kChars[rng() % (sizeof(kChars) - 1)];
    const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      ::close(fd);
      return name;
    }
    if (errno != EEXIST) {
      return absl::InternalError(absl::StrFormat("%s: cannot create a temporary file beside it: %s",
                                                 path, std::strerror(errno)));
    }
  }
  return absl::InternalError(
      absl::StrFormat("%s: cannot create a temporary file beside it: 100 names taken", path));
}

absl::Status fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::InternalError(absl::StrFormat("%s: cannot open to sync", path));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  // Some file systems (FUSE, network mounts) do not sync directories: nothing to wait for.
  if (rc != 0 && !(error == EINVAL || error == ENOTSUP || error == EOPNOTSUPP))
    return absl::InternalError(absl::StrFormat("%s: fsync failed: %s", path, std::strerror(error)));
  return absl::OkStatus();
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(1, slash));
}

absl::Status publish_temp(const std::string& tmp, const std::string& path, bool replace,
                          bool* published) {
  if (published != nullptr) *published = false;
  absl::Status status = fsync_path(tmp);
  if (status.ok() && replace && std::rename(tmp.c_str(), path.c_str()) != 0)
    status = absl::InternalError(
        absl::StrFormat("%s: rename to %s failed: %s", tmp, path, std::strerror(errno)));
  if (status.ok() && !replace) status = move_no_replace(tmp, path);
  if (!status.ok()) {
    std::remove(tmp.c_str());
    return status;
  }
  if (published != nullptr) *published = true;
  return fsync_path(parent_dir(path));
}

}  // namespace msa
