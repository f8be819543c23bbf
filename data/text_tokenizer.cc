#include "data/text_tokenizer.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

class ByteTokenizer final : public HfTokenizer {
 public:
  // Any bytes, UTF-8 or not: byte b is id b.
  absl::StatusOr<std::vector<uint32_t>> encode(std::string_view text) const override {
    std::vector<uint32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  int64_t vocab_size() const override { return kByteVocab; }
  std::optional<uint32_t> bos_id() const override { return std::nullopt; }
  std::optional<uint32_t> eos_id() const override { return kByteEos; }
  bool adds_bos() const override { return false; }
  bool adds_eos() const override { return false; }
  std::string describe() const override { return "byte-level (byte b -> id b, EOS 256)"; }
  std::string fingerprint() const override { return "byte-level"; }
};

absl::Status io_error(const std::string& path, const char* what) {
  return absl::InternalError(absl::StrFormat("%s: %s: %s", path, what, std::strerror(errno)));
}

// What every document is wrapped in, and what the workers need to tokenize a piece.
struct Tokenization {
  const HfTokenizer* tokenizer = nullptr;
  bool byte_level = false;  // pieces of text documents may be split; any bytes are accepted
  std::optional<uint32_t> bos, eos;
  const std::vector<std::string>* inputs = nullptr;
  std::string text_field;
  bool split_special = false;
};

struct PieceOutput {
  std::vector<uint32_t> tokens;
  int64_t documents = 0;
  int64_t text_tokens = 0;  // the documents' own tokens, without BOS and EOS
  int64_t special_text_documents = 0;
  absl::Status status;
};

absl::Status tokenize_piece(const TextPiece& piece, const Tokenization& t, PieceOutput* out) {
  const std::string& file = (*t.inputs)[piece.input];
  auto where = [&](int64_t line) {
    return piece.format == TextFormat::kJsonl
               ? absl::StrFormat("invalid --input: '%s' line %d", file, line)
               : absl::StrFormat("invalid --input: '%s'", file);
  };
  auto append = [&](std::string_view text, int64_t line, bool start, bool end) -> absl::Status {
    if (start && t.bos) out->tokens.push_back(*t.bos);
    bool matched_special = false;
    absl::StatusOr<std::vector<uint32_t>> ids =
        t.tokenizer->encode_with_options(text, t.split_special, &matched_special);
    if (!ids.ok()) return annotate(ids.status(), where(line));
    if (matched_special) ++out->special_text_documents;
    const int64_t vocab = t.tokenizer->vocab_size();
    for (const uint32_t id : *ids)
      if (static_cast<int64_t>(id) >= vocab)
        return absl::InternalError(absl::StrFormat(
            "%s: the tokenizer returned id %d, outside its vocab_size %d", where(line), id, vocab));
    out->tokens.insert(out->tokens.end(), ids->begin(), ids->end());
    out->text_tokens += static_cast<int64_t>(ids->size());
    if (end) {
      if (t.eos) out->tokens.push_back(*t.eos);
      ++out->documents;
    }
    return absl::OkStatus();
  };
  if (piece.format == TextFormat::kText) {
    if (!t.byte_level) MSA_RETURN_IF_ERROR(check_utf8(piece.bytes, piece.first_line, file));
    return append(piece.bytes, piece.first_line, piece.document_start, piece.document_end);
  }
  std::vector<JsonlDocument> docs;
  MSA_RETURN_IF_ERROR(parse_jsonl(piece.bytes, piece.first_line, file, t.text_field, &docs));
  for (const JsonlDocument& d : docs) MSA_RETURN_IF_ERROR(append(d.text, d.line, true, true));
  return absl::OkStatus();
}

// Tokenizes `pieces` on up to `threads` threads into `outputs` (same order). The calling thread
// reports progress (`done` + what this batch finished so far) every 200 ms while it waits.
void tokenize_batch(const std::vector<TextPiece>& pieces, const Tokenization& t, int threads,
                    const TextShardingProgress& done,
                    const std::function<void(const TextShardingProgress&)>& progress,
                    std::vector<PieceOutput>* outputs) {
  const size_t n = pieces.size();
  outputs->assign(n, PieceOutput{});
  std::atomic<size_t> next{0}, finished{0};
  std::atomic<int64_t> bytes{0}, tokens{0}, documents{0};
  std::mutex mu;
  std::condition_variable cv;
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      PieceOutput& out = (*outputs)[i];
      out.status = tokenize_piece(pieces[i], t, &out);
      bytes += static_cast<int64_t>(pieces[i].bytes.size());
      tokens += static_cast<int64_t>(out.tokens.size());
      documents += out.documents;
      if (finished.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  };
  std::vector<std::thread> workers;
  const int k = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), n));
  workers.reserve(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i) workers.emplace_back(work);
  {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return finished == n; })) {
      if (progress) {
        TextShardingProgress p = done;
        p.bytes_done += bytes;
        p.tokens += tokens;
        p.documents += documents;
        progress(p);
      }
    }
  }
  for (std::thread& w : workers) w.join();
}

// Cuts the token stream into shards named <prefix>-NNNNN.tok inside `dir`.
class ShardSink {
 public:
  ShardSink(std::string dir, std::string prefix, int64_t shard_tokens, TokenWidth width)
      : dir_(std::move(dir)),
        prefix_(std::move(prefix)),
        shard_tokens_(shard_tokens),
        width_(width) {
    buffer_.reserve(static_cast<size_t>(std::min<int64_t>(shard_tokens, 1 << 26)));
  }
  absl::Status append(const std::vector<uint32_t>& tokens) {
    size_t i = 0;
    while (i < tokens.size()) {
      const size_t take =
          std::min(tokens.size() - i, static_cast<size_t>(shard_tokens_) - buffer_.size());
      buffer_.insert(buffer_.end(), tokens.data() + i, tokens.data() + i + take);
      i += take;
      if (static_cast<int64_t>(buffer_.size()) == shard_tokens_) MSA_RETURN_IF_ERROR(flush());
    }
    return absl::OkStatus();
  }
  absl::Status flush() {
    if (buffer_.empty()) return absl::OkStatus();
    const std::string name = absl::StrFormat("%s-%05d.tok", prefix_, names_.size());
    MSA_RETURN_IF_ERROR(write_shard(dir_ + "/" + name, buffer_, width_));
    names_.push_back(name);
    buffer_.clear();
    return absl::OkStatus();
  }
  // The last shard, then every name at one width: past 100000 shards "%05d" grows to six digits
  // and a sorted glob would put train-100000 between train-10000 and train-10001, so the names are
  // widened to the largest index's digits (a rename inside the staging directory: the new name of
  // shard i can only equal its own old one) and sorted order stays write order.
  absl::Status finish() {
    MSA_RETURN_IF_ERROR(flush());
    const int width = static_cast<int>(std::to_string(names_.size() - 1).size());
    if (names_.empty() || width <= 5) return absl::OkStatus();
    for (size_t i = 0; i < names_.size(); ++i) {
      const std::string name = absl::StrFormat("%s-%0*d.tok", prefix_, width, i);
      if (name != names_[i] &&
          std::rename((dir_ + "/" + names_[i]).c_str(), (dir_ + "/" + name).c_str()) != 0)
        return absl::InternalError(absl::StrFormat("cannot rename shard '%s/%s' to '%s': %s", dir_,
                                                   names_[i], name, std::strerror(errno)));
      names_[i] = name;
    }
    return absl::OkStatus();
  }
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::string dir_, prefix_;
  int64_t shard_tokens_;
  TokenWidth width_;
  std::vector<uint32_t> buffer_;
  std::vector<std::string> names_;
};

absl::Status write_metadata(const std::string& path, const TextShardingOptions& o,
                            const std::vector<TextFormat>& formats,
                            const std::vector<int64_t>& sizes, const TextPieceReader& reader,
                            const TextShardingResult& r,
                            const std::vector<std::string>& shard_names) {
  nlohmann::ordered_json j;
  j["written_by"] = "msa-data text";
  j["tokenizer"] = r.tokenizer;
  j["tokenizer_path"] = o.tokenizer_path;
  if (!r.tokenizer_fingerprint.empty()) j["tokenizer_fingerprint"] = r.tokenizer_fingerprint;
  j["vocab_size"] = r.vocab_size;
  j["bos_id"] = r.bos_id ? nlohmann::ordered_json(*r.bos_id) : nlohmann::ordered_json(nullptr);
  j["eos_id"] = r.eos_id ? nlohmann::ordered_json(*r.eos_id) : nlohmann::ordered_json(nullptr);
  if (o.split_special_tokens) j["split_special_tokens"] = true;  // (absent: matched, as before)
  j["token_bytes"] = static_cast<int>(r.width);
  j["documents"] = r.documents;
  j["tokens"] = r.tokens;
  j["shard_tokens"] = o.shard_tokens;
  j["shards"] = shard_names;
  nlohmann::ordered_json inputs = nlohmann::ordered_json::array();
  for (size_t i = 0; i < o.inputs.size(); ++i) {
    nlohmann::ordered_json in;
    in["path"] = o.inputs[i];
    in["format"] = text_format_name(formats[i]);
    if (formats[i] == TextFormat::kJsonl) in["text_field"] = o.text_field;
    in["bytes"] = sizes[i];
    // The content, so that a resume knows shards rebuilt from the same bytes under another path
    // from shards rebuilt from other bytes of the same size (train/batch_source.h).
    in["fnv1a64"] = absl::StrFormat("%016x", reader.input_hash(i));
    inputs.push_back(in);
  }
  j["inputs"] = inputs;
  std::ofstream f(path, std::ios::trunc);
  // Input paths need not be UTF-8; replace what is not rather than fail at the end of a long run.
  f << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  f.close();
  if (!f) return io_error(path, "cannot write metadata");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TextShardingResult> write_text_shards(
    const TextShardingOptions& o,
    const std::function<void(const TextShardingProgress&)>& progress) {
  if (o.inputs.empty()) return absl::InvalidArgumentError("invalid --input: no input files");
  if (o.shard_tokens < 2)
    return absl::InvalidArgumentError("invalid --shard_tokens: must be at least 2");
  if (o.threads < 0) return absl::InvalidArgumentError("invalid --threads: must be >= 0");
  if (o.piece_bytes < 1 || o.batch_bytes < 1)
    return absl::InvalidArgumentError("piece_bytes and batch_bytes must be positive");
  if (o.prefix.empty() || o.prefix.find('/') != std::string::npos)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --prefix: '%s' (a non-empty file name prefix)", o.prefix));

  ByteTokenizer byte_tokenizer;
  Tokenization t;
  t.tokenizer = o.tokenizer != nullptr ? o.tokenizer : &byte_tokenizer;
  t.byte_level = o.tokenizer == nullptr;
  t.inputs = &o.inputs;
  t.text_field = o.text_field;
  t.split_special = o.split_special_tokens;
  const HfTokenizer& tok = *t.tokenizer;
  const int64_t vocab = tok.vocab_size();
  if (vocab < 1 || vocab > (int64_t{1} << 32))
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --tokenizer: vocab_size %d is outside [1, 2^32]", vocab));
  if (tok.adds_bos()) {
    if (!tok.bos_id())
      return absl::InvalidArgumentError(
          "invalid --tokenizer: it adds a BOS token but defines no BOS id");
    t.bos = tok.bos_id();
  }
  t.eos = o.eos_id ? o.eos_id : tok.eos_id();
  if (!t.eos && !t.bos)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --tokenizer: it defines no EOS token and adds no BOS, so nothing would separate "
        "the documents in the token stream; give --eos_id=N to end each document with id N "
        "(tokenizer: %s)",
        tok.describe()));
  for (const auto& [name, id] : {std::pair{"BOS", t.bos}, std::pair{"EOS", t.eos}})
    if (id && static_cast<int64_t>(*id) >= vocab)
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid %s: %s id %d is >= the tokenizer's vocab_size %d",
          std::string(name) == "EOS" && o.eos_id ? "--eos_id" : "--tokenizer", name, *id, vocab));

  std::vector<TextFormat> formats;
  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (const std::string& f : o.inputs) {
    struct stat st;
    if (::stat(f.c_str(), &st) != 0)
      return absl::NotFoundError(absl::StrFormat("invalid --input: cannot read '%s'", f));
    if (S_ISDIR(st.st_mode))
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --input: '%s' is a directory (give its text files, one document each)", f));
    MSA_RETURN_IF_ERROR(check_not_compressed(f));
    formats.push_back(resolve_text_format(o.format, f));
    sizes.push_back(st.st_size);
    total += st.st_size;
  }
  if (o.text_field.empty() && std::count(formats.begin(), formats.end(), TextFormat::kJsonl) > 0)
    return absl::InvalidArgumentError("invalid --text_field: empty");

  struct stat out_st;
  const bool created_output = ::stat(o.output_dir.c_str(), &out_st) != 0;
  MSA_ASSIGN_OR_RETURN(const std::vector<std::string> old_shards,
                       check_shard_dir(o.output_dir, o.overwrite));
  MSA_RETURN_IF_ERROR(check_metadata_slot(o.output_dir, o.prefix, o.overwrite));
  absl::StatusOr<TextShardingResult> result = [&]() -> absl::StatusOr<TextShardingResult> {
    MSA_ASSIGN_OR_RETURN(std::unique_ptr<ShardStagingDir> staging,
                         ShardStagingDir::create(o.output_dir));
    TextShardingResult r;
    r.tokenizer = tok.describe();
    r.tokenizer_fingerprint = tok.fingerprint();
    r.vocab_size = vocab;
    r.bos_id = t.bos;
    r.eos_id = t.eos;
    r.width = token_width_for_vocab(vocab);
    ShardSink sink(staging->path(), o.prefix, o.shard_tokens, r.width);
    TextPieceReader reader(o.inputs, formats, o.piece_bytes, t.byte_level);
    const int threads = o.threads > 0
                            ? o.threads
                            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    TextShardingProgress done;
    done.bytes_total = total;
    std::vector<PieceOutput> outputs;
    int64_t text_tokens = 0;
    for (bool more = true; more;) {
      std::vector<TextPiece> batch;
      int64_t batch_bytes = 0;
      absl::Status read_error;
      while (batch_bytes < o.batch_bytes) {
        absl::StatusOr<std::optional<TextPiece>> piece = reader.next();
        if (!piece.ok()) read_error = piece.status();
        if (!piece.ok() || !piece->has_value()) {
          more = false;
          break;
        }
        batch_bytes += static_cast<int64_t>((*piece)->bytes.size());
        batch.push_back(std::move(**piece));
      }
      tokenize_batch(batch, t, threads, done, progress, &outputs);
      // The first error in input order, whichever thread met it first.
      for (size_t i = 0; i < batch.size(); ++i) {
        MSA_RETURN_IF_ERROR(outputs[i].status);
        MSA_RETURN_IF_ERROR(sink.append(outputs[i].tokens));
        done.bytes_done += static_cast<int64_t>(batch[i].bytes.size());
        done.tokens += static_cast<int64_t>(outputs[i].tokens.size());
        done.documents += outputs[i].documents;
        text_tokens += outputs[i].text_tokens;
        r.special_text_documents += outputs[i].special_text_documents;
      }
      MSA_RETURN_IF_ERROR(read_error);
      if (progress) progress(done);
    }
    // Nothing to train on: fail before the commit, so that --overwrite does not replace a
    // folder's shards with none. Documents of no text count as none (JSONL of empty strings
    // gave only BOS / EOS ids).
    if (done.documents == 0 || text_tokens == 0)
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --input: no text in %s (empty files, JSONL without a non-blank line, or "
          "only empty \"%s\" strings): nothing was written and '%s' is unchanged",
          absl::StrJoin(o.inputs, ", "), o.text_field, o.output_dir));
    MSA_RETURN_IF_ERROR(sink.finish());
    r.tokens = done.tokens;
    r.documents = done.documents;
    for (const std::string& name : sink.names()) r.shards.push_back(o.output_dir + "/" + name);
    const std::string metadata_name = o.prefix + ".json";
    r.metadata = o.output_dir + "/" + metadata_name;
    MSA_RETURN_IF_ERROR(write_metadata(staging->path() + "/" + metadata_name, o, formats, sizes,
                                       reader, r, sink.names()));
    // The metadata file moves last: shards without it are from an interrupted commit.
    std::vector<std::string> stale = old_shards;
    std::vector<std::string> names = sink.names();
    names.push_back(metadata_name);
    MSA_RETURN_IF_ERROR(staging->commit(o.output_dir, stale, names));
    return r;
  }();
  if (!result.ok() && created_output) ::rmdir(o.output_dir.c_str());
  return result;
}

}  // namespace msa
