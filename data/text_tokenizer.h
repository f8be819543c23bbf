// msa-data text: documents (plain text files, JSONL lines) -> token shards, with a Hugging Face
// tokenizer or the built-in byte-level one (byte b is token b, token 256 = kByteEos separates
// documents; models trained on it need vocab_size >= 257).
//
// Each document becomes [BOS, when the tokenizer adds one] + its ids + [EOS]. Documents are
// tokenized on several threads; the shards are identical for every thread count. A run either
// leaves a complete new set of shards and its metadata file, or nothing new at all: shards are
// written into a hidden staging directory inside the output directory and moved into place at the
// end, and old shards (with `overwrite`) are deleted only then.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/hf_tokenizer.h"
#include "data/shard.h"
#include "data/text_documents.h"

namespace msa {

inline constexpr uint32_t kByteEos = 256;
inline constexpr int64_t kByteVocab = 257;

struct TextShardingOptions {
  std::vector<std::string> inputs;        // text files (one document each) and JSONL files
  TextFormat format = TextFormat::kAuto;  // kAuto: by extension (resolve_text_format)
  std::string text_field = "text";        // JSONL: the string field holding the document
  // Not owned; null: the byte-level tokenizer. `tokenizer_path` (--tokenizer) only goes into the
  // metadata file.
  const HfTokenizer* tokenizer = nullptr;
  std::string tokenizer_path;
  // The id after each document; default: the tokenizer's EOS. A tokenizer without EOS that adds
  // BOS is accepted (BOS then separates documents); one with neither needs this.
  std::optional<uint32_t> eos_id;
  // Special-token text in a document (a quoted "<|eot_id|>") is encoded as ordinary text, not as
  // the special id (HfTokenizer::encode_with_options); false: as the tokenizers library
  // encodes it, the special id.
  bool split_special_tokens = false;
  std::string output_dir;
  std::string prefix = "train";    // shards are <output_dir>/<prefix>-<5+ digits>.tok
  int64_t shard_tokens = 1 << 24;  // tokens per shard (the last one may be shorter)
  bool overwrite = false;          // replace the shards already in output_dir (else: refuse)
  int threads = 0;                 // tokenizing threads; 0: hardware concurrency
  // Work units (they do not change the output): a JSONL piece holds about this many bytes of
  // whole lines; the byte-level tokenizer also cuts text documents into pieces of this size
  // (other tokenizers read each text document whole). A batch of pieces of about batch_bytes is
  // tokenized at a time.
  int64_t piece_bytes = 1 << 20;
  int64_t batch_bytes = 32 << 20;
};

struct TextShardingProgress {
  int64_t bytes_done = 0, bytes_total = 0;  // input bytes
  int64_t documents = 0, tokens = 0;        // written so far
};

struct TextShardingResult {
  std::vector<std::string> shards;  // final paths, in order
  std::string metadata;             // <output_dir>/<prefix>.json
  int64_t tokens = 0, documents = 0;
  // Documents whose text held a special token's text that became its special id (none with
  // split_special_tokens).
  int64_t special_text_documents = 0;
  std::string tokenizer;              // the tokenizer's describe()
  std::string tokenizer_fingerprint;  // and its fingerprint()
  int64_t vocab_size = 0;
  std::optional<uint32_t> bos_id;  // the id that starts each document, if any
  std::optional<uint32_t> eos_id;  // the id that ends each document, if any
  TokenWidth width = TokenWidth::kU16;
};

// Tokenizes the inputs in order into shards of token_width_for_vocab(vocab_size). Errors name the
// flag, and for bad input the file and 1-based line ("invalid --input: 'a.jsonl' line 3: ...");
// on any error the output directory is as it was before the call. `progress` (optional) is called
// from the calling thread every fraction of a second and once at the end.
absl::StatusOr<TextShardingResult> write_text_shards(
    const TextShardingOptions& options,
    const std::function<void(const TextShardingProgress&)>& progress = nullptr);

}  // namespace msa
