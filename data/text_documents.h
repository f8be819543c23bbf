// msa-data text's inputs, cut into pieces of work in input order: plain text files (one document
// each) and JSONL files (one document per line, taken from a string field of a JSON object).
// Every error names the file, and for JSONL and UTF-8 problems the 1-based line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace msa {

enum class TextFormat { kAuto, kText, kJsonl };

// "auto", "text" or "jsonl"; anything else is an error naming --format.
absl::StatusOr<TextFormat> parse_text_format(std::string_view name);
const char* text_format_name(TextFormat format);
// kAuto becomes kJsonl for a path ending in .jsonl or .ndjson, kText otherwise.
TextFormat resolve_text_format(TextFormat format, const std::string& path);

// Refuses (naming the file and the tool) an input that starts with a gzip, zstd, xz or bzip2
// signature: its compressed bytes were tokenized as text without a word.
absl::Status check_not_compressed(const std::string& path);

// Whether `path`, its format left to its name (kAuto), is a .json file (any case) whose text is
// JSON (past a byte order mark and white space, within its first 64 KiB: '[' or '{'), which is
// read as plain text, one document: rarely what is meant. Regular files only.
bool is_json_read_as_text(TextFormat format, const std::string& path);

// One unit of tokenization work. A plain text document is one piece, or several consecutive ones
// when documents are split (only exact for a tokenizer that maps bytes independently); a JSONL
// piece holds whole lines.
struct TextPiece {
  size_t input = 0;  // index into the reader's inputs
  TextFormat format = TextFormat::kText;
  int64_t first_line = 1;                           // 1-based line of bytes[0] in its file
  bool document_start = true, document_end = true;  // kText: this piece begins / ends its document
  std::string bytes;
};

// Reads the inputs in order. JSONL pieces end at a line end once they hold `piece_bytes` (a longer
// line is one piece); plain text documents are read whole, or in pieces of `piece_bytes` when
// `split_text`. Not thread-safe.
class TextPieceReader {
 public:
  TextPieceReader(std::vector<std::string> inputs, std::vector<TextFormat> formats,
                  int64_t piece_bytes, bool split_text);
  ~TextPieceReader();
  TextPieceReader(const TextPieceReader&) = delete;
  TextPieceReader& operator=(const TextPieceReader&) = delete;

  // The next piece, nullopt after the last; an error naming the file when it cannot be read.
  absl::StatusOr<std::optional<TextPiece>> next();

  // FNV-1a 64 of input i's bytes read so far: of the whole file once next() returned nullopt.
  // What the shards' metadata records of an input's content (its path says nothing of it).
  uint64_t input_hash(size_t i) const { return hashes_[i]; }

 private:
  absl::Status read_block(std::string* out, int64_t n, bool* eof);

  std::vector<std::string> inputs_;
  std::vector<TextFormat> formats_;
  int64_t piece_bytes_;
  bool split_text_;
  size_t file_ = 0;
  std::FILE* in_ = nullptr;
  int64_t line_ = 1;      // line of the next unread byte
  bool started_ = false;  // a piece of the current file was returned
  std::string carry_;     // JSONL: bytes read past the last complete line
  std::vector<uint64_t> hashes_;
};

// OK when `bytes` is valid UTF-8 (RFC 3629: no overlong forms, surrogates or code points past
// U+10FFFF); else "invalid --input: 'FILE' line L, column C: invalid UTF-8 (byte 0xNN)" for the
// first bad sequence, where bytes[0] is on line `first_line` and C counts bytes from 1.
absl::Status check_utf8(std::string_view bytes, int64_t first_line, const std::string& file);

struct JsonlDocument {
  int64_t line = 0;  // 1-based line in its file
  std::string text;
};

// Appends the documents of the JSONL lines in `bytes` (whole lines, the first on `first_line`):
// each non-blank line must be valid UTF-8 (check_utf8) and a JSON object whose `field` is a string.
// CRLF line ends are accepted. Errors: "invalid --input: 'FILE' line L[, column C]: ..." saying
// what is wrong (invalid UTF-8, not JSON, not an object, no such field, not a string).
absl::Status parse_jsonl(std::string_view bytes, int64_t first_line, const std::string& file,
                         const std::string& field, std::vector<JsonlDocument>* out);

}  // namespace msa
