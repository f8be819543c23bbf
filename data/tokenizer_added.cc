#include "data/tokenizer_added.h"

#include <algorithm>

#include "data/tokenizer_unicode.h"

namespace msa::tok {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens,
                                     const std::vector<std::string>& patterns)
    : tokens_(std::move(tokens)) {
  trie_.emplace_back();
  for (size_t k = 0; k < tokens_.size(); ++k) {
    const std::string& p = patterns[k];
    if (p.empty()) continue;
    first_byte_[static_cast<uint8_t>(p[0])] = true;
    int32_t node = 0;
    for (char ch : p) {
      const auto c = static_cast<uint8_t>(ch);
      auto& next = trie_[node].next;
      auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
      if (it != next.end() && it->first == c) {
        node = it->second;
      } else {
        const auto child = static_cast<int32_t>(trie_.size());
        next.insert(it, {c, child});
        trie_.emplace_back();  // invalidates `next`; not used again
        node = child;
      }
    }
    // Two tokens of the same text (normalized alike): the first keeps it, as the tokenizers
    // library's matcher does through 0.22 (the last one won).
    if (trie_[node].token < 0) trie_[node].token = static_cast<int32_t>(k);
  }
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t at, size_t* end) const {
  int32_t node = 0, found = -1;
  for (size_t i = at; i < text.size(); ++i) {
    const auto c = static_cast<uint8_t>(text[i]);
    const auto& next = trie_[node].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
    if (it == next.end() || it->first != c) break;
    node = it->second;
    if (trie_[node].token >= 0) {
      found = trie_[node].token;
      *end = i + 1;
    }
  }
  return found;
}

void AddedTokenMatcher::split(const Piece& piece, std::vector<Piece>& out, bool skip_special,
                              bool* matched_special) const {
  const std::string_view s = piece.text;
  auto emit_text = [&](size_t b, size_t e) {
    if (e > b) out.push_back({s.substr(b, e - b), piece.original_begin + b, -1});
  };
  if (tokens_.empty()) {
    emit_text(0, s.size());
    return;
  }
  size_t start_offset = 0;
  for (size_t i = 0; i < s.size();) {
    if (!first_byte_[static_cast<uint8_t>(s[i])]) {
      ++i;
      continue;
    }
    size_t stop = 0;
    const int32_t k = longest_at(s, i, &stop);
    if (k < 0) {
      ++i;
      continue;
    }
    size_t start = i;
    i = stop;  // the search resumes after the raw match, whatever lstrip/rstrip do below
    const AddedToken& t = tokens_[k];
    // The library's split_special_tokens: the match is found (and hides any token inside it),
    // then left as text.
    if (skip_special && t.special) continue;
    if (t.single_word) {
      size_t before = start;
      const bool start_space = start == 0 || !is_word_char(previous_code_point(s, before));
      size_t after = stop;
      const bool stop_space = stop == s.size() || !is_word_char(next_code_point(s, after));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t newstart = start;
      while (newstart > 0) {
        size_t p = newstart;
        if (!is_white_space(previous_code_point(s, p))) break;
        newstart = p;
      }
      start = std::max(newstart, start_offset);
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        size_t p = stop;
        if (!is_white_space(next_code_point(s, p))) break;
        stop = p;
      }
    }
    emit_text(start_offset, start);
    out.push_back({s.substr(start, stop > start ? stop - start : 0), piece.original_begin + start,
                   static_cast<int64_t>(t.id)});
    if (t.special && matched_special != nullptr) *matched_special = true;
    start_offset = stop;
  }
  emit_text(start_offset, s.size());
}

}  // namespace msa::tok
