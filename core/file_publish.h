// Writing a file so that readers only ever see it whole, and a file that must not be replaced
// is not: write to a temporary file beside it, sync, then move it into place.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace msa {

// Creates an empty file beside `path`, exclusively and under a unique name (<path>.tmp.XXXXXX),
// and returns its name: a file of the user's that happens to be called <path>.tmp, or another
// process writing the same output, is never truncated.
absl::StatusOr<std::string> create_temp_beside(const std::string& path);

// fsyncs the written temporary file `tmp` and moves it to `path`, then fsyncs the directory.
// replace = false: fails (FailedPrecondition, naming `path`) when `path` exists, also when it
// appeared while `tmp` was written (a hard link, which never replaces, then the temporary name is
// removed). `tmp` is removed whenever this fails.
absl::Status publish_temp(const std::string& tmp, const std::string& path, bool replace);

// fsync of a file or directory.
absl::Status fsync_path(const std::string& path);

// The directory holding `path` ("." for a bare name).
std::string parent_dir(const std::string& path);

}  // namespace msa
