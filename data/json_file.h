// A JSON file read whole (msa-data's shard metadata, tokenizer.json, config.json). One reading for
// all of them, so that a path that is a directory or a special file gets a message instead of the
// std::ios_base::failure a stream read throws there (nlohmann's allow_exceptions=false covers
// only parse errors).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace msa {

// NotFound: `path` does not exist, is not a regular file (a directory) or cannot be read;
// InvalidArgument: its bytes are not one JSON value, or it nests deeper than 128 levels. Messages
// start with the path.
absl::StatusOr<nlohmann::json> read_json_file(const std::string& path);

// Member `key` of object `j` as a bool: `fallback` when absent or null (the tokenizers library
// reads its flags as optional), else it must be true or false; the error names `where`.`key`.
absl::StatusOr<bool> optional_bool(const nlohmann::json& j, const char* key, bool fallback,
                                   const std::string& where);

}  // namespace msa
