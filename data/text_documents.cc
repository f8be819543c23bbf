#include "data/text_documents.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/fnv1a.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

int64_t count_newlines(std::string_view s) {
  return static_cast<int64_t>(std::count(s.begin(), s.end(), '\n'));
}

absl::Status input_error(const std::string& file, int64_t line, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --input: '%s' line %d: %s", file, line, what));
}

absl::Status input_error(const std::string& file, int64_t line, int64_t column,
                         std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --input: '%s' line %d, column %d: %s", file, line, column, what));
}

// The part of a nlohmann parse error after "parse error at line 1, column N: ".
std::string json_reason(const nlohmann::json::parse_error& e) {
  const std::string what = e.what();
  const size_t column = what.find("column ");
  const size_t colon = column == std::string::npos ? column : what.find(": ", column);
  return colon == std::string::npos ? what : what.substr(colon + 2);
}

}  // namespace

absl::StatusOr<TextFormat> parse_text_format(std::string_view name) {
  if (name == "auto") return TextFormat::kAuto;
  if (name == "text") return TextFormat::kText;
  if (name == "jsonl") return TextFormat::kJsonl;
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --format: '%s' (expected auto, text or jsonl)", name));
}

const char* text_format_name(TextFormat format) {
  switch (format) {
    case TextFormat::kAuto:
      return "auto";
    case TextFormat::kText:
      return "text";
    case TextFormat::kJsonl:
      return "jsonl";
  }
  return "?";
}

TextFormat resolve_text_format(TextFormat format, const std::string& path) {
  if (format != TextFormat::kAuto) return format;
  // Case-insensitively: DATA.JSONL is JSON Lines too.
  return absl::EndsWithIgnoreCase(path, ".jsonl") || absl::EndsWithIgnoreCase(path, ".ndjson")
             ? TextFormat::kJsonl
             : TextFormat::kText;
}

namespace {

// The first `n` bytes of `path` ("" unless it is a regular file that can be read): a pipe's
// (<(zcat f.gz), /dev/stdin, a FIFO) would be taken away from the reader.
std::string head_of_regular_file(const std::string& path, size_t n) {
  if (struct stat st; ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  std::string head(n, '\0');
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return "";  // the reader says why it cannot open it
  head.resize(std::fread(head.data(), 1, n, f));
  std::fclose(f);
  return head;
}

}  // namespace

absl::Status check_not_compressed(const std::string& path) {
  const std::string head = head_of_regular_file(path, 10);
  struct Magic {
    const char* name;
    absl::string_view bytes;
    const char* tool;
  };
  static const Magic kMagic[] = {{"gzip", absl::string_view("\x1f\x8b", 2), "gunzip -k"},
                                 {"zstd", absl::string_view("\x28\xb5\x2f\xfd", 4), "zstd -d"},
                                 {"xz",
                                  absl::string_view("\xfd"
                                                    "7zXZ\x00",
                                                    6),
                                  "xz -dk"}};
  const Magic* found = nullptr;
  for (const Magic& m : kMagic)
    if (absl::StartsWith(head, m.bytes)) found = &m;
  // bzip2: "BZh", the block size digit, then a block's magic or an empty stream's end.
  static const Magic kBzip2 = {"bzip2", "BZh", "bunzip2 -k"};
  const absl::string_view after = head.size() == 10 ? absl::string_view(head).substr(4) : "";
  if (absl::StartsWith(head, kBzip2.bytes) && head[3] >= '1' && head[3] <= '9' &&
      (after == "1AY&SY" || after == absl::string_view("\x17rE8P\x90", 6)))
    found = &kBzip2;
  if (found == nullptr) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "invalid --input: '%s' is %s-compressed (its bytes would be read as text): decompress it "
      "first (%s)",
      path, found->name, found->tool));
}

bool is_json_read_as_text(TextFormat format, const std::string& path) {
  if (format != TextFormat::kAuto || !absl::EndsWithIgnoreCase(path, ".json")) return false;
  const std::string bytes = head_of_regular_file(path, 1 << 16);
  absl::string_view head = absl::StripLeadingAsciiWhitespace(bytes);
  if (absl::ConsumePrefix(&head, "\xEF\xBB\xBF")) head = absl::StripLeadingAsciiWhitespace(head);
  return absl::StartsWith(head, "[") || absl::StartsWith(head, "{");
}

TextPieceReader::TextPieceReader(std::vector<std::string> inputs, std::vector<TextFormat> formats,
                                 int64_t piece_bytes, bool split_text)
    : inputs_(std::move(inputs)),
      formats_(std::move(formats)),
      piece_bytes_(std::max<int64_t>(1, piece_bytes)),
      split_text_(split_text),
      hashes_(inputs_.size(), kFnv1aBasis) {}

TextPieceReader::~TextPieceReader() {
  if (in_ != nullptr) std::fclose(in_);
}

absl::Status TextPieceReader::read_block(std::string* out, int64_t n, bool* eof) {
  const size_t old = out->size();
  out->resize(old + static_cast<size_t>(n));
  const size_t got = std::fread(out->data() + old, 1, static_cast<size_t>(n), in_);
  out->resize(old + got);
  hashes_[file_] = fnv1a64_update(hashes_[file_], std::string_view(*out).substr(old));
  if (std::ferror(in_))
    return absl::InternalError(absl::StrFormat("invalid --input: '%s': read failed: %s",
                                               inputs_[file_], std::strerror(errno)));
  *eof = got < static_cast<size_t>(n);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<TextPiece>> TextPieceReader::next() {
  while (file_ < inputs_.size()) {
    if (in_ == nullptr) {
      in_ = std::fopen(inputs_[file_].c_str(), "rb");
      if (in_ == nullptr)
        return absl::NotFoundError(absl::StrFormat("invalid --input: cannot open '%s': %s",
                                                   inputs_[file_], std::strerror(errno)));
      line_ = 1;
      started_ = false;
      carry_.clear();
    }
    TextPiece piece;
    piece.input = file_;
    piece.format = formats_[file_];
    piece.first_line = line_;
    piece.document_start = !started_;
    bool eof = false;
    if (piece.format == TextFormat::kText) {
      if (split_text_) {
        MSA_RETURN_IF_ERROR(read_block(&piece.bytes, piece_bytes_, &eof));
        if (!eof) {  // a piece that ends exactly at the end of the file must say so
          const int c = std::fgetc(in_);
          if (c == EOF) {
            eof = true;
          } else {
            std::ungetc(c, in_);
          }
        }
      } else {
        while (!eof) MSA_RETURN_IF_ERROR(read_block(&piece.bytes, int64_t{1} << 24, &eof));
      }
      piece.document_end = eof;
    } else {
      // Whole lines: read until the piece is full and holds a line end, keep the rest for later.
      std::string bytes = std::move(carry_);
      carry_.clear();
      size_t cut = bytes.rfind('\n');
      while (!eof &&
             !(static_cast<int64_t>(bytes.size()) >= piece_bytes_ && cut != std::string::npos)) {
        const size_t old = bytes.size();
        MSA_RETURN_IF_ERROR(read_block(&bytes, piece_bytes_, &eof));
        const size_t k = std::string_view(bytes).substr(old).rfind('\n');
        if (k != std::string_view::npos) cut = old + k;
      }
      if (!eof) {
        carry_.assign(bytes, cut + 1);
        bytes.resize(cut + 1);
      }
      piece.bytes = std::move(bytes);
    }
    line_ += count_newlines(piece.bytes);
    started_ = true;
    if (eof) {
      std::fclose(in_);
      in_ = nullptr;
      ++file_;
    }
    if (piece.format == TextFormat::kJsonl && piece.bytes.empty()) continue;
    // An empty text file is no document (it became one of just the EOS, so an input of empty
    // files passed the "no documents" check and --overwrite replaced a dataset with it).
    if (piece.format == TextFormat::kText && piece.document_start && piece.document_end &&
        piece.bytes.empty())
      continue;
    return piece;
  }
  return std::nullopt;
}

absl::Status check_utf8(std::string_view bytes, int64_t first_line, const std::string& file) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    // Lead byte: sequence length and the allowed range of the second byte (RFC 3629 table).
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
    }
    bool ok = len > 0 && i + static_cast<size_t>(len) <= n;
    for (int k = 1; ok && k < len; ++k) {
      const unsigned char b = p[i + k];
      ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    }
    if (!ok) {
      const std::string_view before = bytes.substr(0, i);
      const size_t line_start = before.rfind('\n');
      const int64_t column =
          static_cast<int64_t>(line_start == std::string_view::npos ? i + 1 : i - line_start);
      const bool truncated = len > 0 && i + static_cast<size_t>(len) > n;
      return input_error(file, first_line + count_newlines(before), column,
                         absl::StrFormat("invalid UTF-8 (byte 0x%02x%s)", static_cast<unsigned>(c),
                                         truncated ? ", truncated sequence" : ""));
    }
    i += static_cast<size_t>(len);
  }
  return absl::OkStatus();
}

absl::Status parse_jsonl(std::string_view bytes, int64_t first_line, const std::string& file,
                         const std::string& field, std::vector<JsonlDocument>* out) {
  if (absl::Status s = check_utf8(bytes, first_line, file); !s.ok()) return s;
  int64_t line = first_line;
  size_t begin = 0;
  while (begin < bytes.size()) {
    size_t end = bytes.find('\n', begin);
    if (end == std::string_view::npos) end = bytes.size();
    std::string_view text = bytes.substr(begin, end - begin);
    begin = end + 1;
    const int64_t this_line = line++;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
    // nlohmann's lexer takes a NUL byte for the end of the input: the rest of the line would be
    // dropped unseen ({"text":"a"}\0garbage parsed as {"text":"a"}).
    if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
      return input_error(file, this_line, static_cast<int64_t>(nul) + 1,
                         "a NUL byte (JSON text cannot hold one outside a string's \\u0000)");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::parse_error& e) {
      return input_error(file, this_line, static_cast<int64_t>(e.byte),
                         "not valid JSON: " + json_reason(e));
    }
    if (!j.is_object())
      return input_error(file, this_line,
                         absl::StrFormat("expected a JSON object with a string field \"%s\", got "
                                         "a JSON %s",
                                         field, j.type_name()));
    const auto it = j.find(field);
    if (it == j.end()) {
      std::vector<std::string> keys;
      for (const auto& [key, value] : j.items()) {
        if (keys.size() == 8) {
          keys.push_back("...");
          break;
        }
        keys.push_back("\"" + key + "\"");
      }
      return input_error(
          file, this_line,
          absl::StrFormat("no field \"%s\" (the object has %s; choose one with --text_field)",
                          field, keys.empty() ? "no fields" : absl::StrJoin(keys, ", ")));
    }
    if (!it->is_string())
      return input_error(
          file, this_line,
          absl::StrFormat("field \"%s\" is a JSON %s, not a string", field, it->type_name()));
    out->push_back({this_line, it->get<std::string>()});
  }
  return absl::OkStatus();
}

}  // namespace msa
