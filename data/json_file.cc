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
  nlohmann::json j = nlohmann::json::parse(bytes.str(), nullptr, /*allow_exceptions=*/false);
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
