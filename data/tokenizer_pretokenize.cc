#include "data/tokenizer_pretokenize.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/json_file.h"
#include "data/tokenizer_unicode.h"
#include "nlohmann/json.hpp"

namespace msa::tok {

void split_by_matches(const std::vector<ByteRange>& matches, uint32_t length,
                      SplitBehavior behavior, bool invert, std::vector<ByteRange>& parts) {
  // The text as alternating (range, is_match) spans, as Pattern::find_matches gives them.
  struct Span {
    uint32_t begin, end;
    bool match;
  };
  std::vector<Span> spans;
  spans.reserve(matches.size() * 2 + 1);
  uint32_t prev = 0;
  for (const ByteRange& m : matches) {
    if (prev != m.begin) spans.push_back({prev, m.begin, invert});
    spans.push_back({m.begin, m.end, !invert});
    prev = m.end;
  }
  if (prev != length) spans.push_back({prev, length, invert});

  const size_t first = parts.size();
  auto keep = [&](uint32_t b, uint32_t e) { parts.push_back({b, e}); };
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) keep(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans)
        if (!s.match) keep(s.begin, s.end);
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.match == previous_match && parts.size() > first) {
          parts.back().end = s.end;
        } else {
          keep(s.begin, s.end);
        }
        previous_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.match && !previous_match && parts.size() > first) {
          parts.back().end = s.end;
        } else {
          keep(s.begin, s.end);
        }
        previous_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      // The library folds from the right: a match joins the part that follows it.
      bool previous_match = false;
      std::vector<ByteRange> reversed;
      for (size_t k = spans.size(); k-- > 0;) {
        const Span& s = spans[k];
        if (s.match && !previous_match && !reversed.empty()) {
          reversed.back().begin = s.begin;
        } else {
          reversed.push_back({s.begin, s.end});
        }
        previous_match = s.match;
      }
      parts.insert(parts.end(), reversed.rbegin(), reversed.rend());
      break;
    }
  }
  // Empty parts never survive PreTokenizedString::split.
  size_t w = first;
  for (size_t r = first; r < parts.size(); ++r)
    if (parts[r].end > parts[r].begin) parts[w++] = parts[r];
  parts.resize(w);
}

namespace {

// Replaces every piece still to encode by the pieces `fn(piece, out)` appends.
template <typename Fn>
absl::Status split_pieces(std::vector<Piece>& pieces, Fn&& fn) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 4);
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      out.push_back(p);
      continue;
    }
    const absl::Status s = fn(p, out);
    if (!s.ok()) return s;
  }
  pieces = std::move(out);
  return absl::OkStatus();
}

void append_parts(const Piece& p, std::string_view text, const std::vector<ByteRange>& parts,
                  std::vector<Piece>& out) {
  for (const ByteRange& r : parts)
    out.push_back({text.substr(r.begin, r.end - r.begin), p.original_begin + r.begin, -1});
}

absl::StatusOr<SplitBehavior> parse_behavior(const nlohmann::json& j, const std::string& where) {
  if (!j.is_string()) return absl::InvalidArgumentError(where + ".behavior: expected a string");
  const std::string b = j.get<std::string>();
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrFormat("%s.behavior: unknown \"%s\"", where, b));
}

class RegexSplit final : public PreTokenizer {
 public:
  RegexSplit(std::unique_ptr<Regex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  absl::Status apply(std::vector<Piece>& pieces, PieceStore&) const override {
    std::vector<ByteRange> matches, parts;
    return split_pieces(pieces, [&](const Piece& p, std::vector<Piece>& out) -> absl::Status {
      matches.clear();
      parts.clear();
      MSA_RETURN_IF_ERROR(regex_->find_all(p.text, matches));
      split_by_matches(matches, static_cast<uint32_t>(p.text.size()), behavior_, invert_, parts);
      append_parts(p, p.text, parts, out);
      return absl::OkStatus();
    });
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPre final : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status apply(std::vector<Piece>& pieces, PieceStore& store) const override {
    std::vector<ByteRange> matches, parts;
    return split_pieces(pieces, [&](const Piece& p, std::vector<Piece>& out) -> absl::Status {
      std::string_view text = p.text;
      if (add_prefix_space_ && text.front() != ' ') text = store.keep(" " + std::string(text));
      if (regex_ == nullptr) {
        out.push_back({text, p.original_begin, -1});
        return absl::OkStatus();
      }
      matches.clear();
      parts.clear();
      MSA_RETURN_IF_ERROR(regex_->find_all(text, matches));
      split_by_matches(matches, static_cast<uint32_t>(text.size()), SplitBehavior::kIsolated, false,
                       parts);
      append_parts(p, text, parts, out);
      return absl::OkStatus();
    });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null: use_regex=false
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePre final : public PreTokenizer {
 public:
  MetaspacePre(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  absl::Status apply(std::vector<Piece>& pieces, PieceStore& store) const override {
    std::vector<ByteRange> matches, parts;
    return split_pieces(pieces, [&](const Piece& p, std::vector<Piece>& out) -> absl::Status {
      std::string s;
      s.reserve(p.text.size() + 8);
      // The library replaces spaces first, so a leading space counts as a leading replacement.
      const bool prepend = !p.text.starts_with(replacement_) && p.text.front() != ' ' &&
                           (scheme_ == PrependScheme::kAlways ||
                            (scheme_ == PrependScheme::kFirst && p.original_begin == 0));
      if (prepend) s += replacement_;
      for (char c : p.text) {
        if (c == ' ') {
          s += replacement_;
        } else {
          s.push_back(c);
        }
      }
      const std::string_view text = store.keep(std::move(s));
      if (!split_) {
        out.push_back({text, p.original_begin, -1});
        return absl::OkStatus();
      }
      // The replacement is one character; in valid UTF-8 its bytes only match at a boundary.
      matches.clear();
      parts.clear();
      for (size_t at = text.find(replacement_); at != std::string_view::npos;
           at = text.find(replacement_, at + replacement_.size()))
        matches.push_back(
            {static_cast<uint32_t>(at), static_cast<uint32_t>(at + replacement_.size())});
      split_by_matches(matches, static_cast<uint32_t>(text.size()), SplitBehavior::kMergedWithNext,
                       false, parts);
      // Offsets into the rewritten text only approximate the input's; 0 stays 0.
      append_parts(p, text, parts, out);
      return absl::OkStatus();
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPre final : public PreTokenizer {
 public:
  explicit DigitsPre(bool individual) : individual_(individual) {}
  absl::Status apply(std::vector<Piece>& pieces, PieceStore&) const override {
    std::vector<ByteRange> matches, parts;
    return split_pieces(pieces, [&](const Piece& p, std::vector<Piece>& out) -> absl::Status {
      matches.clear();
      parts.clear();
      for (size_t i = 0; i < p.text.size();) {
        const size_t b = i;
        if (is_numeric(next_code_point(p.text, i)))
          matches.push_back({static_cast<uint32_t>(b), static_cast<uint32_t>(i)});
      }
      split_by_matches(matches, static_cast<uint32_t>(p.text.size()),
                       individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false,
                       parts);
      append_parts(p, p.text, parts, out);
      return absl::OkStatus();
    });
  }

 private:
  bool individual_;
};

class SequencePre final : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status apply(std::vector<Piece>& pieces, PieceStore& store) const override {
    for (const auto& step : steps_) MSA_RETURN_IF_ERROR(step->apply(pieces, store));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const nlohmann::json& j,
                                                                  const std::string& where,
                                                                  bool* byte_level) {
  *byte_level = false;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return absl::InvalidArgumentError(where + ".type: missing");
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    const auto it = j.find("pretokenizers");
    if (it == j.end() || !it->is_array())
      return absl::InvalidArgumentError(where + ".pretokenizers: missing or not a list");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t k = 0; k < it->size(); ++k) {
      const std::string sub = absl::StrFormat("%s.pretokenizers[%d]", where, k);
      if (*byte_level)
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: a pre-tokenizer after ByteLevel is not supported (ByteLevel must come last)",
            sub));
      bool sub_byte_level = false;
      auto step = parse_pre_tokenizer((*it)[k], sub, &sub_byte_level);
      if (!step.ok()) return step.status();
      steps.push_back(*std::move(step));
      *byte_level = sub_byte_level;
    }
    return std::unique_ptr<PreTokenizer>(new SequencePre(std::move(steps)));
  }
  if (type == "ByteLevel") {
    auto add_prefix_space = optional_bool(j, "add_prefix_space", true, where);
    auto use_regex = optional_bool(j, "use_regex", true, where);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    if (!use_regex.ok()) return use_regex.status();
    std::unique_ptr<Regex> regex;
    if (*use_regex) {
      auto r = Regex::from_onig(kGpt2Pattern);
      if (!r.ok()) return r.status();
      regex = *std::move(r);
    }
    *byte_level = true;
    return std::unique_ptr<PreTokenizer>(new ByteLevelPre(*add_prefix_space, std::move(regex)));
  }
  if (type == "Split") {
    const auto pattern = j.find("pattern");
    if (pattern == j.end() || !pattern->is_object())
      return absl::InvalidArgumentError(where + ".pattern: missing");
    std::unique_ptr<Regex> regex;
    if (pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      auto r = Regex::from_onig((*pattern)["Regex"].get<std::string>());
      if (!r.ok()) return annotate(r.status(), where + ".pattern.Regex");
      regex = *std::move(r);
    } else if (pattern->contains("String") && (*pattern)["String"].is_string()) {
      auto r = Regex::literal((*pattern)["String"].get<std::string>());
      if (!r.ok()) return annotate(r.status(), where + ".pattern.String");
      regex = *std::move(r);
    } else {
      return absl::InvalidArgumentError(where +
                                        ".pattern: expected {\"Regex\": ...} or {\"String\": ...}");
    }
    if (!j.contains("behavior")) return absl::InvalidArgumentError(where + ".behavior: missing");
    auto behavior = parse_behavior(j["behavior"], where);
    if (!behavior.ok()) return behavior.status();
    auto invert = optional_bool(j, "invert", false, where);
    if (!invert.ok()) return invert.status();
    return std::unique_ptr<PreTokenizer>(new RegexSplit(std::move(regex), *behavior, *invert));
  }
  if (type == "Metaspace") {
    const auto rep = j.find("replacement");
    if (rep == j.end() || !rep->is_string() || rep->get<std::string>().empty())
      return absl::InvalidArgumentError(where + ".replacement: missing");
    const std::string replacement = rep->get<std::string>();
    if (utf8_length(static_cast<unsigned char>(replacement[0])) != replacement.size() ||
        find_invalid_utf8(replacement) != std::string_view::npos)
      return absl::InvalidArgumentError(where + ".replacement: expected one character");
    PrependScheme scheme = PrependScheme::kAlways;
    if (const auto ps = j.find("prepend_scheme"); ps != j.end() && !ps->is_null()) {
      const std::string s = ps->is_string() ? ps->get<std::string>() : "";
      if (s == "always") {
        scheme = PrependScheme::kAlways;
      } else if (s == "first") {
        scheme = PrependScheme::kFirst;
      } else if (s == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return absl::InvalidArgumentError(
            where + ".prepend_scheme: expected \"always\", \"first\" or \"never\"");
      }
    }
    // Files written before prepend_scheme existed say add_prefix_space instead.
    auto add_prefix_space = optional_bool(j, "add_prefix_space", true, where);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    if (!*add_prefix_space) {
      if (scheme != PrependScheme::kNever && j.contains("prepend_scheme") &&
          !j["prepend_scheme"].is_null())
        return absl::InvalidArgumentError(
            where + ".add_prefix_space: false does not match the declared prepend_scheme");
      scheme = PrependScheme::kNever;
    }
    auto split = optional_bool(j, "split", true, where);
    if (!split.ok()) return split.status();
    return std::unique_ptr<PreTokenizer>(new MetaspacePre(replacement, scheme, *split));
  }
  if (type == "Digits") {
    auto individual = optional_bool(j, "individual_digits", false, where);
    if (!individual.ok()) return individual.status();
    return std::unique_ptr<PreTokenizer>(new DigitsPre(*individual));
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s.type: pre-tokenizer \"%s\" is not supported (supported: ByteLevel, Split, Metaspace, "
      "Digits, Sequence)",
      where, type));
}

}  // namespace msa::tok
