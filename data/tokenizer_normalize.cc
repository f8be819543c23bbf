#include "data/tokenizer_normalize.h"

#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/json_file.h"
#include "data/tokenizer_regex.h"
#include "data/tokenizer_unicode.h"
#include "nlohmann/json.hpp"

namespace msa::tok {

namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  absl::StatusOr<std::string> normalize(std::string_view text,
                                        size_t* dropped_prefix) const override {
    *dropped_prefix = 0;
    return normalize_unicode(text, form_);
  }

 private:
  NormalForm form_;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::StatusOr<std::string> normalize(std::string_view text,
                                        size_t* dropped_prefix) const override {
    *dropped_prefix = 0;
    if (text.empty()) return std::string();
    std::string out;
    out.reserve(prefix_.size() + text.size());
    out += prefix_;
    out += text;
    return out;
  }

 private:
  std::string prefix_;
};

class Replace final : public Normalizer {
 public:
  // `literal` non-empty: replace that string; else `regex`.
  Replace(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}
  absl::StatusOr<std::string> normalize(std::string_view text,
                                        size_t* dropped_prefix) const override {
    std::string out;
    out.reserve(text.size() + text.size() / 4);
    // Matches replaced by nothing that start where the kept text would: dropped from the front.
    *dropped_prefix = 0;
    auto note_drop = [&](size_t begin, size_t end) {
      if (content_.empty() && out.empty() && begin == *dropped_prefix) *dropped_prefix = end;
    };
    if (!literal_.empty()) {
      size_t from = 0;
      for (size_t at = text.find(literal_); at != std::string_view::npos;
           at = text.find(literal_, from)) {
        note_drop(at, at + literal_.size());
        out.append(text.substr(from, at - from));
        out += content_;
        from = at + literal_.size();
      }
      out.append(text.substr(from));
      return out;
    }
    std::vector<ByteRange> matches;
    MSA_RETURN_IF_ERROR(regex_->find_all(text, matches));
    size_t from = 0;
    for (const ByteRange& m : matches) {
      note_drop(m.begin, m.end);
      out.append(text.substr(from, m.begin - from));
      out += content_;
      from = m.end;
    }
    out.append(text.substr(from));
    return out;
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

class Strip final : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  absl::StatusOr<std::string> normalize(std::string_view text,
                                        size_t* dropped_prefix) const override {
    size_t b = 0, e = text.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_white_space(next_code_point(text, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t i = e;
        if (!is_white_space(previous_code_point(text, i))) break;
        e = i;
      }
    }
    *dropped_prefix = b;
    return std::string(text.substr(b, e - b));
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::StatusOr<std::string> normalize(std::string_view text,
                                        size_t* dropped_prefix) const override {
    // Each step's drop is counted in its own input's bytes: their sum says whether the start moved
    // (a Prepend's text dropped again by a later step counts too: a corner no real file has).
    std::string s(text);
    *dropped_prefix = 0;
    for (const auto& step : steps_) {
      size_t dropped = 0;
      MSA_ASSIGN_OR_RETURN(s, step->normalize(s, &dropped));
      *dropped_prefix += dropped;
    }
    return s;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

absl::StatusOr<std::string> required_string(const nlohmann::json& j, const char* key,
                                            const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    return absl::InvalidArgumentError(
        absl::StrFormat("%s.%s: missing or not a string", where, key));
  return it->get<std::string>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> parse_normalizer(const nlohmann::json& j,
                                                             const std::string& where) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return absl::InvalidArgumentError(where + ".type: missing");
  const std::string type = j["type"].get<std::string>();
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfc));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfd));
  if (type == "NFKC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfkc));
  if (type == "NFKD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfkd));
  if (type == "Prepend") {
    MSA_ASSIGN_OR_RETURN(std::string prefix, required_string(j, "prepend", where));
    return std::unique_ptr<Normalizer>(new Prepend(std::move(prefix)));
  }
  if (type == "Replace") {
    MSA_ASSIGN_OR_RETURN(std::string content, required_string(j, "content", where));
    const auto pattern = j.find("pattern");
    if (pattern == j.end() || !pattern->is_object())
      return absl::InvalidArgumentError(where + ".pattern: missing");
    if (pattern->contains("String") && (*pattern)["String"].is_string()) {
      std::string literal = (*pattern)["String"].get<std::string>();
      if (literal.empty())
        return absl::InvalidArgumentError(where + ".pattern.String: empty pattern");
      return std::unique_ptr<Normalizer>(new Replace(std::move(literal), nullptr, content));
    }
    if (pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      auto regex = Regex::from_onig((*pattern)["Regex"].get<std::string>());
      if (!regex.ok()) return annotate(regex.status(), where + ".pattern.Regex");
      return std::unique_ptr<Normalizer>(new Replace("", *std::move(regex), content));
    }
    return absl::InvalidArgumentError(where +
                                      ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
  }
  if (type == "Strip") {
    MSA_ASSIGN_OR_RETURN(const bool left, optional_bool(j, "strip_left", true, where));
    MSA_ASSIGN_OR_RETURN(const bool right, optional_bool(j, "strip_right", true, where));
    return std::unique_ptr<Normalizer>(new Strip(left, right));
  }
  if (type == "Sequence") {
    const auto it = j.find("normalizers");
    if (it == j.end() || !it->is_array())
      return absl::InvalidArgumentError(where + ".normalizers: missing or not a list");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t k = 0; k < it->size(); ++k) {
      auto step = parse_normalizer((*it)[k], absl::StrFormat("%s.normalizers[%d]", where, k));
      if (!step.ok()) return step.status();
      steps.push_back(*std::move(step));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s.type: normalizer \"%s\" is not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, "
      "Replace, Strip, Sequence)",
      where, type));
}

}  // namespace msa::tok
