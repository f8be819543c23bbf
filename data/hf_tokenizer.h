// Hugging Face tokenizer.json, natively: the models that the supported checkpoint families use.
//   - byte-level BPE with its pre-tokenizer regex (GPT-2, Llama 3, Qwen2/2.5/3),
//   - BPE over SentencePiece-style Metaspace pieces with byte fallback (Llama 2, Mistral),
// their normalizers, and added/special tokens. Token ids equal the `tokenizers` library's
// encode(text, add_special_tokens=False) for every supported file; anything else in a
// tokenizer.json that would change the ids is refused by name at load time.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace msa {

class HfTokenizer {
 public:
  virtual ~HfTokenizer() = default;

  // `path` is a tokenizer.json file or a directory holding one (a Hugging Face model directory);
  // tokenizer_config.json beside it, when present, gives add_bos_token / add_eos_token and the
  // bos/eos token names. Errors name the file and the JSON field.
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> load(const std::string& path);

  // Ids of `text` without BOS/EOS (the library's add_special_tokens=False). Added and special
  // tokens written literally in the text are matched as the library matches them. Invalid UTF-8 is
  // an error (its byte offset in the message). Thread-safe: may be called concurrently.
  virtual absl::StatusOr<std::vector<uint32_t>> encode(std::string_view text) const = 0;
  // encode, with split_special_tokens: special tokens written in the text are not matched but
  // encoded as ordinary text (the library's split_special_tokens=True: the special match is found
  // and left as text, so no added token of the same pass, raw or normalized, matches inside it);
  // `matched_special` (when given) tells whether a special token's text was matched (never with
  // split_special_tokens).
  virtual absl::StatusOr<std::vector<uint32_t>> encode_with_options(std::string_view text,
                                                                    bool split_special_tokens,
                                                                    bool* matched_special) const {
    if (matched_special != nullptr) *matched_special = false;
    return encode(text);
  }

  // One more than the largest id, added tokens included.
  virtual int64_t vocab_size() const = 0;
  // Document delimiters: bos/eos ids when the tokenizer defines them, and whether the tokenizer's
  // post-processor / tokenizer_config.json adds them to an encoded sequence.
  virtual std::optional<uint32_t> bos_id() const = 0;
  virtual std::optional<uint32_t> eos_id() const = 0;
  virtual bool adds_bos() const = 0;
  virtual bool adds_eos() const = 0;
  // One line for logs: model kind, vocabulary, bos/eos.
  virtual std::string describe() const = 0;
  // A hash of the text behind each id (the vocabulary's and the added tokens' id and token; not
  // how text is split into them, nor whether BOS is added): two tokenizers with the same one give
  // every id the same meaning. "" when unknown.
  virtual std::string fingerprint() const { return ""; }
};

}  // namespace msa
