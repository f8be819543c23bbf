// msa-data: writes token shards for msa-train.
//   msa-data text --input=a.txt,b.jsonl --output=DIR [--tokenizer=PATH] [--shard_tokens=N]
//   msa-data synthetic --task=kv-recall|needle --seq_len=N --samples=N
//   --output=DIR [--depth=D]
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/status.h"
#include "data/hf_tokenizer.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/synthetic_shards.h"
#include "data/text_documents.h"
#include "data/text_tokenizer.h"
#include "launch/program_usage.h"

ABSL_FLAG(std::string, input, "",
          "text: comma-separated input files: plain text (one document each) or JSONL (one "
          "document per line).");
ABSL_FLAG(std::string, format, "auto",
          "text: 'text', 'jsonl', or 'auto' (JSONL for names ending in .jsonl or .ndjson).");
ABSL_FLAG(std::string, text_field, "text", "text: the JSONL string field holding the document.");
ABSL_FLAG(std::string, tokenizer, "",
          "text: a Hugging Face tokenizer.json, or a model directory holding one; default: "
          "byte-level (vocab 257, EOS 256).");
ABSL_FLAG(int64_t, eos_id, -1,
          "text: the id that ends each document (default: the tokenizer's EOS).");
ABSL_FLAG(bool, split_special_tokens, false,
          "text: encode special-token text written in a document (a quoted \"<|eot_id|>\") as "
          "ordinary text instead of the special id (the tokenizers library's "
          "split_special_tokens=True); default: the special id, as the library encodes it.");
ABSL_FLAG(int, threads, 0, "text: tokenizing threads (0: one per hardware thread).");
ABSL_FLAG(std::string, output, "", "Output directory for the shards (created if missing).");
ABSL_FLAG(bool, overwrite, false,
          "Delete the shards (*.tok) already in --output first; without it, msa-data refuses an "
          "--output that holds shards (a glob would mix stale shards with the new ones).");
ABSL_FLAG(std::string, prefix, "",
          "Shard file prefix (default: 'train' for text, the task name "
          "for synthetic).");
ABSL_FLAG(int64_t, shard_tokens, 1 << 24,
          "Tokens per shard (synthetic: as many whole samples as fit, at least one).");
ABSL_FLAG(std::string, task, "kv-recall", "synthetic: 'kv-recall' or 'needle' (docs/data.md).");
ABSL_FLAG(int64_t, seq_len, 4096, "synthetic: tokens per sample.");
ABSL_FLAG(int64_t, samples, 1000, "synthetic: number of samples.");
ABSL_FLAG(int, pairs, 4, "synthetic kv-recall: facts per sample (1..8).");
ABSL_FLAG(double, depth, -1, "synthetic: fractional depth of the facts (< 0: random).");
ABSL_FLAG(uint64_t, seed, 1, "synthetic: seed.");

namespace {

// "[####....]  45.2% 452 / 1000 samples", redrawn in place.
void progress_bar(int64_t done, int64_t total) {
  const int width = 40;
  const double frac = total > 0 ? std::min(1.0, static_cast<double>(done) / total) : 1.0;
  const int filled = static_cast<int>(frac * width);
  std::fprintf(stderr, "\r[%s%s] %5.1f%% %lld / %lld samples", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), 100 * frac, static_cast<long long>(done),
               static_cast<long long>(total));
  if (done >= total) std::fprintf(stderr, "\n");
}

// "[####....]  45.2% 123.4 / 273.0 MB, 12.3 MB/s, 31234567 tokens", redrawn in place.
class TextProgressBar {
 public:
  void operator()(const msa::TextShardingProgress& p) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const int width = 40;
    const double frac =
        p.bytes_total > 0 ? std::min(1.0, static_cast<double>(p.bytes_done) / p.bytes_total) : 1.0;
    const int filled = static_cast<int>(frac * width);
    std::fprintf(stderr, "\r[%s%s] %5.1f%% %.1f / %.1f MB, %.1f MB/s, %lld tokens",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 100 * frac, p.bytes_done / 1e6, p.bytes_total / 1e6,
                 seconds > 0 ? p.bytes_done / 1e6 / seconds : 0.0,
                 static_cast<long long>(p.tokens));
    drawn_ = true;
  }
  void finish() {
    if (drawn_) std::fprintf(stderr, "\n");
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  bool drawn_ = false;
};

absl::Status run_text() {
  msa::TextShardingOptions o;
  for (absl::string_view f : absl::StrSplit(absl::GetFlag(FLAGS_input), ',', absl::SkipEmpty()))
    o.inputs.emplace_back(f);
  o.output_dir = absl::GetFlag(FLAGS_output);
  if (o.output_dir.empty()) return absl::InvalidArgumentError("invalid --output: required");
  if (!absl::GetFlag(FLAGS_prefix).empty()) o.prefix = absl::GetFlag(FLAGS_prefix);
  o.shard_tokens = absl::GetFlag(FLAGS_shard_tokens);
  o.overwrite = absl::GetFlag(FLAGS_overwrite);
  MSA_ASSIGN_OR_RETURN(o.format, msa::parse_text_format(absl::GetFlag(FLAGS_format)));
  o.text_field = absl::GetFlag(FLAGS_text_field);
  o.threads = absl::GetFlag(FLAGS_threads);
  const int64_t eos_id = absl::GetFlag(FLAGS_eos_id);
  if (eos_id < -1 || eos_id > 0xFFFFFFFFLL)
    return absl::InvalidArgumentError("invalid --eos_id: must be a token id, or -1");
  if (eos_id >= 0) o.eos_id = static_cast<uint32_t>(eos_id);
  std::unique_ptr<msa::HfTokenizer> tokenizer;
  o.tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  o.split_special_tokens = absl::GetFlag(FLAGS_split_special_tokens);
  if (o.split_special_tokens && o.tokenizer_path.empty())
    return absl::InvalidArgumentError(
        "invalid --split_special_tokens: the byte-level tokenizer (no --tokenizer) has no special "
        "tokens");
  if (!o.tokenizer_path.empty()) {
    absl::StatusOr<std::unique_ptr<msa::HfTokenizer>> loaded =
        msa::HfTokenizer::load(o.tokenizer_path);
    if (!loaded.ok()) return msa::annotate(loaded.status(), "invalid --tokenizer");
    tokenizer = std::move(*loaded);
    o.tokenizer = tokenizer.get();
  }
  // A JSON file (not JSON Lines) is plain text here: its whole text one document. Said, since it
  // is rarely meant (an array of documents, a dataset's single-object dump).
  for (const std::string& f : o.inputs)
    if (msa::is_json_read_as_text(o.format, f))
      std::fprintf(stderr,
                   "msa-data: note: '%s' is JSON, read as plain text (its whole text one "
                   "document); documents one per line are JSON Lines: name the file .jsonl or give "
                   "--format=jsonl\n",
                   f.c_str());
  TextProgressBar bar;
  absl::StatusOr<msa::TextShardingResult> result =
      msa::write_text_shards(o, [&bar](const msa::TextShardingProgress& p) { bar(p); });
  bar.finish();
  if (!result.ok()) return result.status();
  const msa::TextShardingResult& r = *result;
  std::string ids;
  if (r.bos_id) ids += absl::StrFormat(", BOS %d", *r.bos_id);
  if (r.eos_id) ids += absl::StrFormat(", EOS %d", *r.eos_id);
  std::printf(
      "msa-data: %lld documents, %lld tokens (%s; vocab %lld%s; uint%d) in %zu shard(s) "
      "under %s (metadata %s)\n",
      static_cast<long long>(r.documents), static_cast<long long>(r.tokens), r.tokenizer.c_str(),
      static_cast<long long>(r.vocab_size), ids.c_str(), 8 * static_cast<int>(r.width),
      r.shards.size(), o.output_dir.c_str(), r.metadata.c_str());
  if (r.special_text_documents > 0)
    std::fprintf(stderr,
                 "msa-data: note: %lld of %lld documents hold the text of a special token (such "
                 "as an end-of-text marker quoted in the text) that became its special id, as the "
                 "tokenizers library encodes it; --split_special_tokens encodes it as plain text\n",
                 static_cast<long long>(r.special_text_documents),
                 static_cast<long long>(r.documents));
  return absl::OkStatus();
}

absl::Status run_synthetic() {
  if (absl::GetFlag(FLAGS_split_special_tokens))
    return absl::InvalidArgumentError(
        "invalid --split_special_tokens: it belongs to 'text' (synthetic shards have no "
        "tokenizer)");
  msa::SyntheticShardingOptions o;
  msa::SyntheticConfig& c = o.config;
  MSA_ASSIGN_OR_RETURN(c.task, msa::parse_synthetic_task(absl::GetFlag(FLAGS_task)));
  c.seq_len = absl::GetFlag(FLAGS_seq_len);
  c.pairs = absl::GetFlag(FLAGS_pairs);
  c.depth = absl::GetFlag(FLAGS_depth);
  c.seed = absl::GetFlag(FLAGS_seed);
  o.samples = absl::GetFlag(FLAGS_samples);
  o.output_dir = absl::GetFlag(FLAGS_output);
  o.prefix = absl::GetFlag(FLAGS_prefix);
  o.shard_tokens = absl::GetFlag(FLAGS_shard_tokens);
  o.overwrite = absl::GetFlag(FLAGS_overwrite);
  MSA_ASSIGN_OR_RETURN(const msa::SyntheticShardingResult r,
                       msa::write_synthetic_shards(o, progress_bar));
  std::printf(
      "msa-data: %lld %s samples of %lld tokens (%lld tokens) in %zu shard(s) under %s "
      "(vocab %lld; metadata %s)\n",
      static_cast<long long>(o.samples), msa::synthetic_task_name(c.task),
      static_cast<long long>(c.seq_len), static_cast<long long>(r.tokens), r.shards.size(),
      o.output_dir.c_str(), static_cast<long long>(msa::kSyntheticVocab), r.metadata.c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Writes token shards for msa-train.\n"
      "  msa-data text --input=a.txt,b.jsonl --output=DIR [--tokenizer=PATH] [--shard_tokens=N]\n"
      "      [--format=auto|text|jsonl] [--text_field=text] [--threads=N] [--overwrite]\n"
      "      each text file / JSONL line is a document: [BOS] ids EOS; without --tokenizer,\n"
      "      byte-level tokens (byte b -> id b, EOS 256, vocab 257); writes DIR/train-NNNNN.tok\n"
      "      (uint16, uint32 past 65536 ids) and DIR/train.json describing them\n"
      "  msa-data synthetic --task=kv-recall|needle --seq_len=N --samples=N --output=DIR\n"
      "      long-context retrieval samples (docs/data.md), each query followed by its answer;\n"
      "      train on them with msa-train --data='DIR/*.tok' --seq_len=N (one sample per\n"
      "      window), or generate them on the fly with msa-train --data=synthetic:kv-recall\n"
      "      (answers only as masked targets)");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() < 2) {
    std::fprintf(stderr, "msa-data: expected one command, 'text' or 'synthetic' (see --help)\n");
    return 1;
  }
  if (msa::has_stray_arguments(rest, 2, "msa-data")) return 1;
  const std::string command = rest[1];
  absl::Status s;
  if (command == "text") {
    s = run_text();
  } else if (command == "synthetic") {
    s = run_synthetic();
  } else {
    std::fprintf(stderr, "msa-data: unknown command '%s' (expected 'text' or 'synthetic')\n",
                 command.c_str());
    return 1;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "msa-data: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
