// Added tokens of tokenizer.json (special tokens such as <|begin_of_text|>, and tokens added to a
// vocabulary): found in the text before the model runs, as the `tokenizers` library's
// AddedVocabulary does. Matching is leftmost-longest over the token contents, non-overlapping;
// single_word, lstrip and rstrip apply as in AddedVocabulary::find_matches.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer_pretokenize.h"

namespace msa::tok {

struct AddedToken {
  std::string content;
  uint32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class AddedTokenMatcher {
 public:
  // `patterns[k]` is what is searched for `tokens[k]` (its content, or its normalized content).
  AddedTokenMatcher(std::vector<AddedToken> tokens, const std::vector<std::string>& patterns);
  bool empty() const { return tokens_.empty(); }

  // Splits `piece` (id < 0) into matched tokens (id set) and the text between them (id < 0),
  // appending them to `out`. Empty text pieces are not appended. skip_special: a special token's
  // match stays text (the library's split_special_tokens; it still hides what lies inside it).
  // `matched_special` (when given) is set when a special token was matched.
  void split(const Piece& piece, std::vector<Piece>& out, bool skip_special = false,
             bool* matched_special = nullptr) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t token = -1;                             // index into tokens_ ending here
  };
  // The longest token starting at text[at], or -1; *end is set past it.
  int32_t longest_at(std::string_view text, size_t at, size_t* end) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> trie_;
  bool first_byte_[256] = {};
};

}  // namespace msa::tok
