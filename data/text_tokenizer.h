// Byte-level tokenization for msa-data: byte b is token b, and token 256
// (kByteEos) separates documents. Models trained on it need vocab_size >= 257.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace msa {

inline constexpr uint32_t kByteEos = 256;
inline constexpr int64_t kByteVocab = 257;

struct TextShardingOptions {
  std::vector<std::string> inputs;  // one document per file
  std::string output_dir;
  std::string prefix = "train";    // shards are <output_dir>/<prefix>-<5 digits>.tok
  int64_t shard_tokens = 1 << 24;  // tokens per shard (the last one may be shorter)
  bool overwrite = false;          // delete shards already in output_dir (else: refuse)
};

struct TextShardingResult {
  std::vector<std::string> shards;
  int64_t tokens = 0, documents = 0;
};

// Tokenizes the inputs in order (EOS after each document) into shards.
// `progress` (optional) is called with (bytes done, bytes total) as input is
// consumed.
absl::StatusOr<TextShardingResult> write_text_shards(
    const TextShardingOptions& options,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace msa
