#include "core/file_publish.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"

namespace msa {

absl::StatusOr<std::string> create_temp_beside(const std::string& path) {
  std::string name = path + ".tmp.XXXXXX";
  std::vector<char> buffer(name.begin(), name.end());
  buffer.push_back('\0');
  const int fd = ::mkstemp(buffer.data());
  if (fd < 0)
    return absl::InternalError(absl::StrFormat("%s: cannot create a temporary file beside it: %s",
                                               path, std::strerror(errno)));
  ::close(fd);
  return std::string(buffer.data());
}

absl::Status fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::InternalError(absl::StrFormat("%s: cannot open to sync", path));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return absl::InternalError(absl::StrFormat("%s: fsync failed", path));
  return absl::OkStatus();
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(1, slash));
}

absl::Status publish_temp(const std::string& tmp, const std::string& path, bool replace) {
  absl::Status status = fsync_path(tmp);
  if (status.ok() && replace) {
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      status = absl::InternalError(
          absl::StrFormat("%s: rename to %s failed: %s", tmp, path, std::strerror(errno)));
  } else if (status.ok()) {
    if (::link(tmp.c_str(), path.c_str()) == 0) {
      ::unlink(tmp.c_str());
    } else if (errno == EEXIST) {
      status = absl::FailedPreconditionError(absl::StrFormat(
          "'%s' appeared while it was being written (another process?); it was not replaced",
          path));
    } else if (struct stat st; ::lstat(path.c_str(), &st) == 0) {
      status = absl::FailedPreconditionError(
          absl::StrFormat("'%s' already exists; it was not replaced", path));
    } else if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      // No hard links on this file system: the existence check above, then a rename.
      status = absl::InternalError(
          absl::StrFormat("%s: rename to %s failed: %s", tmp, path, std::strerror(errno)));
    }
  }
  if (!status.ok()) {
    std::remove(tmp.c_str());
    return status;
  }
  return fsync_path(parent_dir(path));
}

}  // namespace msa
