// Writing a file so that readers only ever see it whole, and a file that must not be replaced
// is not: write to a temporary file beside it, sync, then move it into place.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace msa {

// Creates an empty file beside `path`, exclusively and under a unique name (<path>.tmp.XXXXXXXX),
// and returns its name: a file of the user's that happens to be called <path>.tmp, or another
// process writing the same output, is never truncated.
absl::StatusOr<std::string> create_temp_beside(const std::string& path);

// fsyncs the written temporary file `tmp` and moves it to `path`, then fsyncs the directory.
// replace = false: fails (FailedPrecondition, naming `path`) when `path` exists, also when it
// appeared while `tmp` was written (renameat2 RENAME_NOREPLACE, else a hard link; only a file
// system with neither falls back to a check then a rename). `tmp` is removed whenever this fails.
// `published` (when given) tells whether `path` is the new file, which it is when only the final
// directory fsync failed.
absl::Status publish_temp(const std::string& tmp, const std::string& path, bool replace,
                          bool* published = nullptr);

// fsync of a file or directory; one whose file system cannot sync it (EINVAL, ENOTSUP) passes.
absl::Status fsync_path(const std::string& path);

// The directory holding `path` ("." for a bare name).
std::string parent_dir(const std::string& path);

}  // namespace msa
