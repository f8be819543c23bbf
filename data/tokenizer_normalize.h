// Normalizers of tokenizer.json: NFC, NFD, NFKC, NFKD, Prepend, Replace (String or Regex pattern),
// Strip and Sequence, as the `tokenizers` library applies them. Any other type (Lowercase,
// BertNormalizer, Precompiled, StripAccents, Nmt, ByteLevel, ...) changes ids in ways not
// reproduced here and is refused by name.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace msa::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `text` is valid UTF-8; so is the result. Fails only when a Replace regex exhausts its stack.
  absl::StatusOr<std::string> normalize(std::string_view text) const {
    size_t dropped = 0;
    return normalize(text, &dropped);
  }
  // Also sets *dropped_prefix to the bytes of `text` removed before its first kept character
  // (Strip's leading whitespace, a Replace by "" at the start): the result's first character then
  // starts past the original's start, which Metaspace's prepend_scheme "first" asks (the
  // tokenizers library reads the original offsets). Inserted text (Prepend) counts as at the start.
  virtual absl::StatusOr<std::string> normalize(std::string_view text,
                                                size_t* dropped_prefix) const = 0;
};

// Parses tokenizer.json's "normalizer" value `j` (not null); `where` names it in errors.
absl::StatusOr<std::unique_ptr<Normalizer>> parse_normalizer(const nlohmann::json& j,
                                                             const std::string& where);

}  // namespace msa::tok
