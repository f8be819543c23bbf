// Token shards (DESIGN.md section 7): a 32-byte little-endian header, then the
// tokens.
//
//   offset  size  field
//   0       8     magic "MSATOKEN"
//   8       4     version (1)
//   12      4     bytes per token: 2 (uint16) or 4 (uint32)
//   16      8     token count N
//   24      8     reserved (0)
//   32      N*w   tokens
//
// msa-data text ends each document with an EOS id (the tokenizer chooses the id; docs/data.md).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace msa {

inline constexpr char kShardMagic[8] = {'M', 'S', 'A', 'T', 'O', 'K', 'E', 'N'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 32;

enum class TokenWidth : uint32_t { kU16 = 2, kU32 = 4 };

// The narrowest width that holds every id below `vocab_size`.
TokenWidth token_width_for_vocab(int64_t vocab_size);

// Writes `tokens` as a shard at `path` (through a temporary file renamed into
// place). Fails if a token does not fit `width`.
absl::Status write_shard(const std::string& path, absl::Span<const uint32_t> tokens,
                         TokenWidth width);

// A read-only, memory-mapped shard. The header and the file size are validated
// on open.
class ShardReader {
 public:
  static absl::StatusOr<std::unique_ptr<ShardReader>> open(const std::string& path);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return count_; }
  TokenWidth width() const { return width_; }
  uint32_t token(int64_t i) const;
  // Copies tokens [begin, begin + n) into out; the range must lie inside the
  // shard.
  void read(int64_t begin, int64_t n, int32_t* out) const;
  // Fails naming the file, the position and the id of the first token >=
  // vocab_size.
  absl::Status check_vocab(int64_t vocab_size) const;

 private:
  ShardReader() = default;
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
  int64_t count_ = 0;
  TokenWidth width_ = TokenWidth::kU16;
};

// The files matching a shell glob, sorted; an error naming the pattern when
// nothing matches.
absl::StatusOr<std::vector<std::string>> glob_files(const std::string& pattern);

// Checks `dir` as the home of new shards: creates it if missing (one level), refuses a path that
// is not a directory, and returns the files of earlier runs in it: the shards (*.tok, and *.tok.tmp
// left by an interrupted write), sorted, then the metadata file <prefix>.json of each set of
// <prefix>-NNNNN.tok shards. Refuses a directory holding shards unless `overwrite`. Deletes
// nothing. Errors name the directory (as msa-data's --output).
absl::StatusOr<std::vector<std::string>> check_shard_dir(const std::string& dir, bool overwrite);

// Checks <dir>/<prefix>.json as the place for new metadata, which the commit renames over
// whatever is there: refuses a directory or another non-file (the rename would fail after the
// shards moved in, leaving them without metadata), and a file that is not msa-data's metadata
// (any of its subcommands') unless `overwrite` (--prefix=tokenizer in a model directory must not
// replace the model's tokenizer.json). Errors name the path as msa-data's --output.
absl::Status check_metadata_slot(const std::string& dir, const std::string& prefix, bool overwrite);

// The metadata file msa-data writes with the shard <dir>/<prefix>-NNNNN.tok (five digits or more):
// <dir>/<prefix>.json
// (nullopt for a file not named so).
std::optional<std::string> shard_metadata_path(const std::string& shard);
// The distinct metadata paths of `shards` (shard_metadata_path of each, sorted; whether the files
// exist is not checked).
std::vector<std::string> shard_metadata_files(const std::vector<std::string>& shards);

// Removes `dir` and the files directly inside it (a staging directory: flat, ours). Best effort:
// what cannot be removed stays.
void remove_flat_dir(const std::string& dir);

// A hidden directory (.msa-data-XXXXXX) inside an output directory that holds new shards until
// they are complete; removed with whatever it holds unless committed, so that a run that fails
// part-way (bad input, a full disk, an allocation) leaves the output's old shards as they were.
class ShardStagingDir {
 public:
  // Errors name `parent` as msa-data's --output.
  static absl::StatusOr<std::unique_ptr<ShardStagingDir>> create(const std::string& parent);
  ~ShardStagingDir();
  ShardStagingDir(const ShardStagingDir&) = delete;
  ShardStagingDir& operator=(const ShardStagingDir&) = delete;
  const std::string& path() const { return path_; }

  // Moves `names` (in order) from the staging directory to `dir`, then deletes the files of
  // `stale` (the old shards and metadata) that the new ones did not replace, then removes the
  // staging directory. The new files go in first (rename replaces a same-named old one
  // atomically), so that a failure part-way never leaves the directory without a complete set.
  absl::Status commit(const std::string& dir, const std::vector<std::string>& stale,
                      const std::vector<std::string>& names);

 private:
  explicit ShardStagingDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace msa
