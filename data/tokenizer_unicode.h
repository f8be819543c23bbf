// UTF-8 and Unicode character classes for the tokenizer.json encoder, with the meanings the
// `tokenizers` library (Rust) gives them: White_Space for char::is_whitespace, general category N
// for char::is_numeric, the regex crate's \w for word characters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace msa::tok {

// Abseil may be built with its own string_view: its hash maps look std::string_view keys up
// through this.
inline absl::string_view as_absl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// Byte offset of the first byte that does not start a valid UTF-8 sequence (overlong forms,
// surrogates and code points past U+10FFFF are invalid), or std::string_view::npos.
size_t find_invalid_utf8(std::string_view s);

// Length of the UTF-8 sequence that starts with `lead` (1 for a continuation byte, so that loops
// over invalid text still advance).
inline size_t utf8_length(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the code point at s[i] of valid UTF-8 and moves i past it.
inline char32_t next_code_point(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const unsigned char b = p[0];
  if (b < 0x80) {
    i += 1;
    return b;
  }
  if (b < 0xE0) {
    i += 2;
    return (char32_t{b & 0x1Fu} << 6) | (p[1] & 0x3Fu);
  }
  if (b < 0xF0) {
    i += 3;
    return (char32_t{b & 0x0Fu} << 12) | (char32_t{p[1] & 0x3Fu} << 6) | (p[2] & 0x3Fu);
  }
  i += 4;
  return (char32_t{b & 0x07u} << 18) | (char32_t{p[1] & 0x3Fu} << 12) |
         (char32_t{p[2] & 0x3Fu} << 6) | (p[3] & 0x3Fu);
}

// The code point that ends at s[end] (exclusive) of valid UTF-8; moves end to its start.
char32_t previous_code_point(std::string_view s, size_t& end);

void append_utf8(std::string& out, char32_t cp);

// Unicode White_Space (Rust char::is_whitespace, the regex crate's \s).
bool is_white_space(char32_t cp);
// General category Nd, Nl or No (Rust char::is_numeric).
bool is_numeric(char32_t cp);
// The regex crate's \w: letters, marks, Nd, Pc, Nl, ZWNJ/ZWJ.
bool is_word_char(char32_t cp);

// Unicode normalization forms, applied to valid UTF-8.
enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
std::string normalize_unicode(std::string_view s, NormalForm form);

}  // namespace msa::tok
