#include "data/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_format.h"
#include "data/tokenizer_unicode.h"

namespace msa::tok {

namespace {

// Unicode White_Space as class members (Oniguruma's \s on UTF-8; PCRE2's UCP \s adds U+180E).
constexpr std::string_view kSpaceMembers =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
// Oniguruma's Unicode \w: Letter, Mark, Number (all of it: ² and Ⅻ too), Connector_Punctuation.
constexpr std::string_view kWordMembers = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
constexpr std::string_view kHexMembers = "0-9a-fA-F";

std::string pcre2_error(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

// Per-thread matching state: match data and a JIT stack large enough for long whitespace runs
// under patterns such as \s+(?!\S), which backtrack over every character of the run.
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    data = pcre2_match_data_create(8, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 << 10, 256 << 20, nullptr);
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

}  // namespace

absl::StatusOr<std::string> onig_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  size_t class_start = 0;  // position in `out` just after '[' or '[^'
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) return absl::InvalidArgumentError("pattern ends with a backslash");
      const char e = p[++i];
      switch (e) {
        case 's':
          out += in_class ? std::string(kSpaceMembers) : "[" + std::string(kSpaceMembers) + "]";
          continue;
        case 'S':
          if (in_class) {
            out += "\\S";  // differs from Oniguruma only on U+180E
          } else {
            out += "[^" + std::string(kSpaceMembers) + "]";
          }
          continue;
        case 'd':
          out += "\\p{Nd}";
          continue;
        case 'w':
          out += in_class ? std::string(kWordMembers) : "[" + std::string(kWordMembers) + "]";
          continue;
        case 'h':
          out += in_class ? std::string(kHexMembers) : "[" + std::string(kHexMembers) + "]";
          continue;
        case 'D':
        case 'W':
        case 'H':
          if (in_class)
            return absl::InvalidArgumentError(
                absl::StrFormat("\\%c inside a character class is not supported", e));
          out += e == 'D' ? "\\P{Nd}"
                          : "[^" + std::string(e == 'W' ? kWordMembers : kHexMembers) + "]";
          continue;
        case 'u': {  // \uHHHH
          if (i + 4 >= p.size()) return absl::InvalidArgumentError("truncated \\u escape");
          out += "\\x{" + std::string(p.substr(i + 1, 4)) + "}";
          i += 4;
          continue;
        }
        case 'v':  // Oniguruma: the vertical tab only (PCRE2: all vertical whitespace)
          out += "\\x{0B}";
          continue;
        case 'p':
        case 'P':
          // A property name is copied whole: \p{^L} (its negation) is not an anchor.
          if (i + 1 < p.size() && p[i + 1] == '{') {
            const size_t close = p.find('}', i + 1);
            if (close == std::string_view::npos)
              return absl::InvalidArgumentError("unterminated \\p{...} property");
            out.push_back('\\');
            out.append(p.substr(i, close + 1 - i));
            i = close;
            continue;
          }
          out.push_back('\\');
          out.push_back(e);
          continue;
        case 'A':
        case 'z':
        case 'Z':
        case 'G':
          return absl::InvalidArgumentError(absl::StrFormat("anchor \\%c is not supported", e));
        default:
          out.push_back('\\');
          out.push_back(e);
          continue;
      }
    }
    if (in_class) {
      if (c == ']' && out.size() > class_start) {
        in_class = false;
      } else if (c == '[' && !(i + 1 < p.size() && p[i + 1] == ':')) {
        return absl::InvalidArgumentError("nested character classes are not supported");
      } else if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') {
        return absl::InvalidArgumentError("character class intersection (&&) is not supported");
      } else if (c == '[') {  // POSIX bracket [:alpha:]: copy through its closing ":]"
        const size_t close = p.find(":]", i + 2);
        if (close == std::string_view::npos)
          return absl::InvalidArgumentError("unterminated POSIX bracket expression");
        out.append(p.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      class_start = out.size();
      continue;
    }
    if (c == '^' || c == '$')
      return absl::InvalidArgumentError(absl::StrFormat(
          "anchor '%c' is not supported (Oniguruma's line anchors differ from PCRE2's)", c));
    // Option groups (?imx-imx) and (?imx-imx:...): Oniguruma's (Ruby syntax) m is PCRE2's s (dot
    // matches a newline); PCRE2's own m (multiline anchors) has no Oniguruma spelling.
    if (c == '(' && i + 1 < p.size() && p[i + 1] == '?') {
      size_t j = i + 2;
      while (j < p.size() && (p[j] == 'i' || p[j] == 'm' || p[j] == 'x' || p[j] == '-')) ++j;
      if (j > i + 2 && j < p.size() && (p[j] == ':' || p[j] == ')')) {
        out += "(?";
        for (size_t k = i + 2; k < j; ++k) out.push_back(p[k] == 'm' ? 's' : p[k]);
        i = j - 1;  // the ':' or ')' follows as it is
        continue;
      }
      if (j < p.size() && p[j] == 's')
        return absl::InvalidArgumentError("option 's' is not Oniguruma's (its dot-all is 'm')");
    }
    // Oniguruma reads {,n} as {0,n}; PCRE2 before 10.43 as the literal text.
    if (c == '{' && i + 1 < p.size() && p[i + 1] == ',') {
      size_t j = i + 2;
      while (j < p.size() && p[j] >= '0' && p[j] <= '9') ++j;
      if (j > i + 2 && j < p.size() && p[j] == '}') {
        out += "{0";
        continue;  // the ',' and the digits follow as they are
      }
    }
    out.push_back(c);
  }
  if (in_class) return absl::InvalidArgumentError("unterminated character class");
  return out;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::from_onig(std::string_view pattern) {
  auto translated = onig_to_pcre2(pattern);
  if (!translated.ok())
    return absl::InvalidArgumentError(
        absl::StrFormat("regex \"%s\": %s", pattern, translated.status().message()));
  std::unique_ptr<Regex> r(new Regex());
  r->pcre2_pattern_ = *std::move(translated);
  int err = 0;
  PCRE2_SIZE offset = 0;
  r->code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(r->pcre2_pattern_.data()),
                           r->pcre2_pattern_.size(),
                           // \C (one byte) would cut pieces inside a UTF-8 sequence (the
                           // tokenizers library refuses it too).
                           PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C, &err, &offset,
                           nullptr);
  if (r->code_ == nullptr)
    return absl::InvalidArgumentError(absl::StrFormat("regex \"%s\": %s (at offset %d of \"%s\")",
                                                      pattern, pcre2_error(err), offset,
                                                      r->pcre2_pattern_));
  pcre2_jit_compile(static_cast<pcre2_code*>(r->code_), PCRE2_JIT_COMPLETE);  // else: interpreted
  return r;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::literal(std::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("empty literal pattern");
  std::unique_ptr<Regex> r(new Regex());
  r->pcre2_pattern_ = std::string(text);
  int err = 0;
  PCRE2_SIZE offset = 0;
  r->code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                           PCRE2_UTF | PCRE2_LITERAL, &err, &offset, nullptr);
  if (r->code_ == nullptr)
    return absl::InvalidArgumentError(
        absl::StrFormat("literal \"%s\": %s", text, pcre2_error(err)));
  pcre2_jit_compile(static_cast<pcre2_code*>(r->code_), PCRE2_JIT_COMPLETE);
  return r;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::find_all(std::string_view text, std::vector<ByteRange>& out) const {
  MatchState& st = match_state();
  const auto* code = static_cast<const pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  size_t last_match_end = SIZE_MAX;
  while (start <= text.size()) {
    const int rc =
        pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, st.data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0)
      return absl::ResourceExhaustedError(
          absl::StrFormat("regex \"%s\" failed on a text of %d bytes: %s", pcre2_pattern_,
                          text.size(), pcre2_error(rc)));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t b = ov[0], e = ov[1];
    if (b == e && e == last_match_end) {
      // Oniguruma's iterator refuses an empty match where the last one ended: step one character.
      if (start >= text.size()) break;
      start += utf8_length(static_cast<unsigned char>(text[start]));
      continue;
    }
    out.push_back({static_cast<uint32_t>(b), static_cast<uint32_t>(e)});
    last_match_end = e;
    start = e;
    if (b == e && start >= text.size()) break;
  }
  return absl::OkStatus();
}

}  // namespace msa::tok
