#include "data/document_starts.h"

#include <cstdint>
#include <optional>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/json_file.h"
#include "data/shard.h"
#include "nlohmann/json.hpp"

namespace msa {

std::vector<int64_t> document_starts(absl::Span<const int32_t> tokens, int32_t eos_id) {
  std::vector<int64_t> starts = {0};
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t t = 0; t + 1 < n; ++t)
    if (tokens[t] == eos_id) starts.push_back(t + 1);
  return starts;
}

absl::StatusOr<int32_t> shards_eos_id(const std::vector<std::string>& shard_paths,
                                      int64_t vocab_size) {
  std::optional<int32_t> eos;
  std::string eos_file;
  for (const std::string& shard : shard_paths) {
    const std::optional<std::string> metadata = shard_metadata_path(shard);
    if (!metadata)
      return absl::InvalidArgumentError(absl::StrFormat(
          "--pack_documents needs the EOS id that separates the documents, from msa-data's "
          "metadata file <prefix>.json of the shards <prefix>-NNNNN.tok; '%s' is not named so",
          shard));
    if (*metadata == eos_file) continue;
    const absl::StatusOr<nlohmann::json> read = read_json_file(*metadata);
    if (absl::IsNotFound(read.status()))
      return absl::NotFoundError(absl::StrFormat(
          "--pack_documents needs the EOS id that separates the documents of '%s': cannot read "
          "its metadata file (written by msa-data): %s",
          shard, read.status().message()));
    // A file that does not parse is said to be invalid JSON (it was "not a JSON object").
    if (!read.ok()) return annotate(read.status(), "--pack_documents");
    const nlohmann::json& j = *read;
    if (!j.is_object())
      return absl::InvalidArgumentError(
          absl::StrFormat("--pack_documents: metadata file '%s' is not a JSON object", *metadata));
    const auto it = j.find("eos_id");
    if (it == j.end() || it->is_null())
      return absl::InvalidArgumentError(absl::StrFormat(
          "--pack_documents: metadata file '%s' names no eos_id, so nothing marks where the "
          "documents of its shards end (rebuild them with msa-data --eos_id=N, or train without "
          "--pack_documents)",
          *metadata));
    if (!it->is_number_unsigned() || it->get<uint64_t>() > INT32_MAX)
      return absl::InvalidArgumentError(
          absl::StrFormat("--pack_documents: metadata file '%s': eos_id %s is not a token id",
                          *metadata, it->dump()));
    const int32_t id = static_cast<int32_t>(it->get<uint64_t>());
    if (vocab_size > 0 && id >= vocab_size)
      return absl::InvalidArgumentError(absl::StrFormat(
          "--pack_documents: metadata file '%s': eos_id %d is not below --vocab_size=%d, so no "
          "token of the shards can be it and no document would ever end",
          *metadata, id, vocab_size));
    if (eos && *eos != id)
      return absl::InvalidArgumentError(absl::StrFormat(
          "--pack_documents: the shards' metadata files disagree on the EOS id: %d in '%s', %d in "
          "'%s'",
          *eos, eos_file, id, *metadata));
    eos = id;
    eos_file = *metadata;
  }
  if (!eos) return absl::InvalidArgumentError("--pack_documents: no shards");
  return *eos;
}

}  // namespace msa
