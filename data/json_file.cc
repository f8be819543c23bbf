#include "data/json_file.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"

namespace msa {

absl::StatusOr<nlohmann::json> read_json_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return absl::NotFoundError(absl::StrFormat("%s: no such file", path));
  if (!S_ISREG(st.st_mode))
    return absl::NotFoundError(absl::StrFormat(
        "%s: %s, not a file", path, S_ISDIR(st.st_mode) ? "a directory" : "a special file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot read", path));
  std::stringstream bytes;
  if (st.st_size > 0 && !(bytes << in.rdbuf()))  // (an empty read sets failbit: "not valid JSON")
    return absl::NotFoundError(absl::StrFormat("%s: cannot read", path));
  // Nesting past any real file's (the tokenizers library stops at 128 too): the readers recurse
  // and build a field path per level, so that a few hundred KB of nested Sequences took gigabytes
  // and aborted. Values past the limit are dropped while parsing.
  constexpr int kMaxDepth = 128;
  bool too_deep = false;
  nlohmann::json j = nlohmann::json::parse(
      bytes.str(),
      [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth > kMaxDepth) too_deep = true;
        return !too_deep;
      },
      /*allow_exceptions=*/false);
  if (too_deep)
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: nested deeper than %d levels", path, kMaxDepth));
  if (j.is_discarded())
    return absl::InvalidArgumentError(absl::StrFormat("%s: not valid JSON", path));
  return j;
}

absl::StatusOr<bool> optional_bool(const nlohmann::json& j, const char* key, bool fallback,
                                   const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean())
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.%s: expected true or false, not %s", where, key, it->dump()));
  return it->get<bool>();
}

}  // namespace msa
