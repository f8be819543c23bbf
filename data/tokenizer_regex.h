// The regular expressions of tokenizer.json (Split and Replace patterns), which the `tokenizers`
// library runs with Oniguruma (Ruby syntax), run here with PCRE2 (UTF, UCP, JIT). The pattern is
// translated first where the two dialects disagree: \s is Unicode White_Space, \d is \p{Nd}, \w is
// letters, marks, Nd and Pc, \h is a hex digit. Constructs whose meaning differs and that no
// supported family uses (anchors ^ and $, nested classes, class intersection) are refused.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace msa::tok {

struct ByteRange {
  uint32_t begin = 0, end = 0;
};

class Regex {
 public:
  // `pattern` in Oniguruma syntax. Errors say what in the pattern is not supported.
  static absl::StatusOr<std::unique_ptr<Regex>> from_onig(std::string_view pattern);
  // Matches `text` literally.
  static absl::StatusOr<std::unique_ptr<Regex>> literal(std::string_view text);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the matches in valid UTF-8 `text` to `out`, left to right and non-overlapping, as
  // Oniguruma's find_iter yields them (an empty match right where the previous match ended is
  // skipped). Thread-safe. Fails only when the text exhausts the matcher's stack.
  absl::Status find_all(std::string_view text, std::vector<ByteRange>& out) const;

  // The PCRE2 pattern actually compiled (for messages and tests).
  const std::string& pcre2_pattern() const { return pcre2_pattern_; }

 private:
  Regex() = default;
  void* code_ = nullptr;  // pcre2_code_8*
  std::string pcre2_pattern_;
};

// The translation from_onig applies (exposed for tests).
absl::StatusOr<std::string> onig_to_pcre2(std::string_view pattern);

}  // namespace msa::tok
