// Pre-tokenizers of tokenizer.json: they cut the (normalized) text into the pieces that the model
// encodes one by one, as the `tokenizers` library's PreTokenizedString::split does. Supported:
// ByteLevel (add_prefix_space, use_regex; it must come last: its byte-to-character mapping is done
// by the BPE model), Split (String or Regex pattern, every behavior, invert), Metaspace
// (replacement, prepend_scheme, split, legacy add_prefix_space), Digits and Sequence. Any other
// type is refused by name.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer_regex.h"
#include "nlohmann/json_fwd.hpp"

namespace msa::tok {

// A piece of the text being encoded: either an added token already matched (id >= 0), or text
// still to pre-tokenize and encode.
struct Piece {
  std::string_view text;
  // Byte offset in the input where the piece starts (Metaspace's prepend_scheme "first" asks
  // whether it is 0). Exact for pieces cut from the input; for pieces cut from normalized text it
  // is the piece's start plus the offset in the normalized text, which is 0 exactly when the
  // library's is.
  uint64_t original_begin = 0;
  int64_t id = -1;
};

// Owns the strings that rewritten pieces point into; addresses stay valid while it lives.
class PieceStore {
 public:
  std::string_view keep(std::string s) {
    strings_.push_back(std::move(s));
    return strings_.back();
  }

 private:
  std::deque<std::string> strings_;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// The parts of a text of `length` bytes that a split keeps, given the pattern's `matches` (sorted,
// non-overlapping): the library's NormalizedString::split. Empty parts are dropped.
void split_by_matches(const std::vector<ByteRange>& matches, uint32_t length,
                      SplitBehavior behavior, bool invert, std::vector<ByteRange>& parts);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece with id < 0 (rewriting its text where the pre-tokenizer does, into
  // `store`); pieces with an id pass through; empty pieces are dropped.
  virtual absl::Status apply(std::vector<Piece>& pieces, PieceStore& store) const = 0;
};

// Parses tokenizer.json's "pre_tokenizer" value `j` (not null). `where` names it in errors
// ("pre_tokenizer", "pre_tokenizer.pretokenizers[1]"). *byte_level is set when the pre-tokenizer
// ends with ByteLevel: the model then receives raw bytes and maps them to the byte alphabet.
absl::StatusOr<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const nlohmann::json& j,
                                                                  const std::string& where,
                                                                  bool* byte_level);

// The GPT-2 pattern that ByteLevel(use_regex=true) splits with.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace msa::tok
