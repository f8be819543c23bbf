// The BPE model of tokenizer.json: merges applied by rank to the characters of one pre-token, as
// the `tokenizers` library's BPE::merge_word does (lowest rank first, leftmost on ties), with its
// unknown-character handling (unk_token, fuse_unk), byte_fallback (<0xNN> tokens) and
// ignore_merges (a pre-token that is itself in the vocabulary is one token).
//
// Byte-level models (ByteLevel pre-tokenizer) receive raw bytes: byte b stands for the character
// that GPT-2's byte alphabet maps it to, so no mapped copy of the text is ever made.
//
// Words are cached per thread (no locks on the hot path); the cache is bounded.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace msa::tok {

struct BpeConfig {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  bool byte_level = false;  // words are raw bytes; vocabulary strings are in the byte alphabet
};

// GPT-2's byte alphabet: the character (as UTF-8) that stands for byte b.
const std::string& byte_level_char(uint8_t b);

class BpeModel {
 public:
  // `vocab` as in tokenizer.json (token -> id); `merges` in rank order. Errors name the field
  // ("model.merges[3]: ...", "model.unk_token: ...").
  static absl::StatusOr<std::unique_ptr<BpeModel>> create(
      std::vector<std::pair<std::string, uint32_t>> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, BpeConfig config);

  // Appends the ids of one pre-token (non-empty, valid UTF-8 unless byte-level). Thread-safe.
  void encode(std::string_view word, std::vector<uint32_t>& out) const;
  // The same without the cache (for tests and for words too long to cache).
  void encode_uncached(std::string_view word, std::vector<uint32_t>& out) const;

  // The id of `token` written as in tokenizer.json's vocab.
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  // Distinct tokens in the vocabulary (the library's BPE::get_vocab_size).
  size_t vocab_entries() const { return vocab_.size(); }
  // The largest id in the vocabulary (-1 when empty).
  int64_t max_id() const { return max_id_; }
  const BpeConfig& config() const { return config_; }

 private:
  BpeModel() = default;
  // The initial symbols of `word` (one per character, or per byte when byte-level), after the
  // unknown / byte-fallback rules.
  void initial_symbols(std::string_view word, std::vector<uint32_t>& symbols) const;

  BpeConfig config_;
  uint64_t cache_key_ = 0;  // unique per model: selects this model's per-thread cache
  absl::flat_hash_map<std::string, uint32_t> vocab_;      // as in tokenizer.json
  absl::flat_hash_map<std::string, uint32_t> raw_vocab_;  // byte-level: tokens as raw bytes
  absl::flat_hash_map<uint64_t, uint64_t> merges_;        // (left << 32 | right) -> rank << 32 | id
  int32_t byte_ids_[256];      // byte-level: id of each byte's character, -1 if absent
  int32_t fallback_ids_[256];  // byte_fallback: id of <0xNN>, -1 if absent
  std::optional<uint32_t> unk_id_;
  int64_t max_id_ = -1;

  friend void bpe_merge_linear(const BpeModel&, std::vector<uint32_t>&);
  friend void bpe_merge_heap(const BpeModel&, std::vector<uint32_t>&);
};

// Applies `model`'s merges to `symbols` in place. Two strategies with one result: a linear scan
// for short words, a priority queue (the library's) for long ones. Exposed for tests.
void bpe_merge_linear(const BpeModel& model, std::vector<uint32_t>& symbols);
void bpe_merge_heap(const BpeModel& model, std::vector<uint32_t>& symbols);

}  // namespace msa::tok
