#include "launch/eval_perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <system_error>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/rng.h"
#include "core/status.h"
#include "data/document_starts.h"
#include "kernels/cross_entropy.h"
#include "model/document_segments.h"
#include "train/batch_source.h"

namespace msa {

absl::StatusOr<std::unique_ptr<EvalShards>> EvalShards::open(const std::string& spec,
                                                             int64_t seq_len, int64_t vocab_size) {
  if (seq_len < 1)
    return absl::InvalidArgumentError(absl::StrFormat("invalid --seq_len: %d is < 1", seq_len));
  std::vector<std::string> files;
  // A shard that two globs match (or one file spelled two ways) would have its windows evaluated
  // and its tokens counted twice: refused, naming both.
  std::map<std::string, std::pair<std::string, std::string>> seen;  // canonical -> (file, glob)
  for (absl::string_view glob : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    auto matched = glob_files(std::string(glob));
    if (!matched.ok()) return annotate(matched.status(), "invalid --data");
    for (const std::string& f : *matched) {
      std::error_code error;
      std::string key = std::filesystem::weakly_canonical(f, error).string();
      if (error) key = f;
      const auto [it, fresh] = seen.emplace(key, std::make_pair(f, std::string(glob)));
      if (!fresh)
        return absl::InvalidArgumentError(absl::StrFormat(
            "invalid --data: the shard '%s' is matched by '%s' and again by '%s' (as '%s'); its "
            "windows would be evaluated twice",
            it->second.first, it->second.second, glob, f));
      files.push_back(f);
    }
  }
  if (files.empty()) return absl::InvalidArgumentError("invalid --data: no shards given");
  MSA_RETURN_IF_ERROR(annotate(check_shard_metadata(files, seq_len), "invalid --data"));
  std::unique_ptr<EvalShards> s(new EvalShards());
  s->seq_len_ = seq_len;
  s->first_window_.push_back(0);
  int64_t longest = -1;
  std::string longest_file;
  for (const std::string& f : files) {
    auto reader = ShardReader::open(f);
    if (!reader.ok()) return annotate(reader.status(), "invalid --data");
    const absl::Status vocab = (*reader)->check_vocab(vocab_size);
    if (!vocab.ok()) return annotate(vocab, "invalid --data");
    const int64_t n = (*reader)->size();
    if (n > longest) longest = n, longest_file = f;
    const int64_t windows = (n - 1) / seq_len;
    if (windows < 1) {
      std::fprintf(stderr,
                   "msa-eval: warning: skipping shard %s: %lld tokens, fewer than --seq_len + 1 "
                   "= %lld\n",
                   f.c_str(), static_cast<long long>(n), static_cast<long long>(seq_len + 1));
      continue;
    }
    s->shards_.push_back(std::move(*reader));
    s->first_window_.push_back(s->first_window_.back() + windows);
  }
  if (s->shards_.empty())
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --data: no shard holds a window of --seq_len + 1 = %d tokens (the longest, %s, "
        "holds %d tokens: give --seq_len <= %d or longer shards)",
        seq_len + 1, longest_file, longest, std::max<int64_t>(0, longest - 1)));
  return s;
}

absl::Status EvalShards::check_vocab(int64_t vocab_size, const std::string& checkpoint) const {
  for (const auto& shard : shards_) {
    const absl::Status s = shard->check_vocab(vocab_size);
    if (!s.ok()) return annotate(s, "invalid --data (for " + checkpoint + ")");
  }
  return absl::OkStatus();
}

void EvalShards::read_window(int64_t w, int32_t* out) const {
  MSA_CHECK(w >= 0 && w < num_windows(), "window %d outside [0, %d)", w, num_windows());
  const auto it = std::upper_bound(first_window_.begin(), first_window_.end(), w);
  const size_t shard = static_cast<size_t>(it - first_window_.begin()) - 1;
  shards_[shard]->read((w - first_window_[shard]) * seq_len_, seq_len_ + 1, out);
}

std::string EvalShards::describe_window(int64_t w) const {
  const auto it = std::upper_bound(first_window_.begin(), first_window_.end(), w);
  const size_t shard = static_cast<size_t>(it - first_window_.begin()) - 1;
  const int64_t begin = (w - first_window_[shard]) * seq_len_;
  return absl::StrFormat("%s tokens [%d, %d)", shards_[shard]->path(), begin, begin + seq_len_ + 1);
}

absl::StatusOr<std::vector<int64_t>> select_eval_windows(int64_t num_windows, int64_t count,
                                                         uint64_t seed) {
  if (count < 1 || count > num_windows)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --eval_windows: %d is outside [1, %d] (the windows the shards hold at this "
        "--seq_len)",
        count, num_windows));
  // One random phase for the whole grid: the windows stay evenly spaced (>= 1 apart, so
  // distinct) and a different seed shifts them all.
  const double u = philox4x32(seed, 0).v[0] / 4294967296.0;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < count; ++i)
    out.push_back(static_cast<int64_t>(
        std::floor((static_cast<double>(i) + u) * static_cast<double>(num_windows) /
                   static_cast<double>(count))));
  return out;
}

absl::StatusOr<std::vector<int64_t>> parse_position_buckets(const std::string& text,
                                                            int64_t seq_len) {
  auto bad = [](const std::string& why) {
    return absl::InvalidArgumentError("invalid --position_buckets: " + why);
  };
  std::vector<int64_t> starts;
  if (text.empty()) {
    int64_t first = 1024;
    while (first > 1 && first > seq_len / 4) first /= 2;
    starts.push_back(0);
    for (int64_t b = first; b < seq_len; b *= 2) starts.push_back(b);
    return starts;
  }
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int64_t value;
    if (!absl::SimpleAtoi(part, &value))
      return bad(absl::StrFormat("'%s' is not an integer", std::string(part)));
    if (starts.empty() && value != 0)
      return bad(absl::StrFormat("the first bucket starts at %d, not 0", value));
    if (!starts.empty() && value <= starts.back())
      return bad(absl::StrFormat("%d does not exceed %d (the starts must increase)", value,
                                 starts.back()));
    if (value >= seq_len)
      return bad(absl::StrFormat("%d is not below --seq_len %d (the last bucket ends there)", value,
                                 seq_len));
    starts.push_back(value);
  }
  return starts;
}

double PositionLoss::mean(size_t bucket) const {
  return tokens[bucket] > 0 ? loss_sum[bucket] / static_cast<double>(tokens[bucket]) : 0.0;
}

int64_t PositionLoss::total_tokens() const {
  int64_t n = 0;
  for (int64_t t : tokens) n += t;
  return n;
}

double PositionLoss::overall_mean() const {
  double sum = 0;
  for (double s : loss_sum) sum += s;
  const int64_t n = total_tokens();
  return n > 0 ? sum / static_cast<double>(n) : 0.0;
}

absl::StatusOr<int32_t> EvalShards::eos_id(int64_t vocab_size) const {
  std::vector<std::string> paths;
  for (const auto& shard : shards_) paths.push_back(shard->path());
  return shards_eos_id(paths, vocab_size);
}

PositionLoss evaluate_loss_by_position(Transformer& model, const EvalShards& shards,
                                       const std::vector<int64_t>& windows,
                                       const std::vector<int64_t>& starts, MsaMode mode,
                                       const WindowProgressFn& progress,
                                       std::optional<int32_t> documents_eos) {
  const int64_t T = shards.seq_len();
  PositionLoss r;
  r.loss_sum.assign(starts.size(), 0.0);
  r.tokens.assign(starts.size(), 0);
  ForwardOptions options;
  options.msa_mode = mode;
  options.for_backward = false;
  std::vector<int32_t> window(T + 1);
  Tensor tokens = Tensor::empty({1, T}, DType::kI32);
  Tensor targets = Tensor::empty({1, T}, DType::kI32);
  for (size_t i = 0; i < windows.size(); ++i) {
    shards.read_window(windows[i], window.data());
    std::copy(window.begin(), window.end() - 1, tokens.data<int32_t>());
    std::copy(window.begin() + 1, window.end(), targets.data<int32_t>());
    // Where the window's documents start: one document, the whole window, unless packed.
    std::vector<int64_t> document_begins = {0};
    options.documents = nullptr;
    if (documents_eos) {
      document_begins =
          document_starts(absl::MakeConstSpan(tokens.data<int32_t>(), T), *documents_eos);
      options.documents = std::make_shared<const DocumentSegments>(
          DocumentSegments::from_starts(1, T, {document_begins}));
    }
    const Tensor device_targets = targets.to(model.device()).view({T});
    const ForwardResult f =
        model.forward(tokens.to(model.device()), device_targets.view({1, T}), options);
    // A token's position is the number of tokens before it that the model sees: in its document
    // when packed (attention and RoPE restart there), else in the window. Each bucket is a slice
    // of logits rows per document, and the kernel's mean over it times its count is its sum.
    const Tensor& logits = model.logits();
    for (size_t d = 0; d < document_begins.size(); ++d) {
      const int64_t doc_begin = document_begins[d];
      const int64_t doc_end = d + 1 < document_begins.size() ? document_begins[d + 1] : T;
      for (size_t b = 0; b < starts.size(); ++b) {
        const int64_t begin = doc_begin + starts[b];
        const int64_t end =
            std::min(doc_end, b + 1 < starts.size() ? doc_begin + starts[b + 1] : T);
        if (begin >= end) continue;
        Tensor lse = Tensor::empty({end - begin},
                                   model.device() == Device::kCUDA ? DType::kF32 : logits.dtype(),
                                   model.device());
        const CrossEntropyResult ce = cross_entropy_forward(
            logits.slice0(begin, end), device_targets.slice0(begin, end), kIgnoreIndex, lse);
        r.loss_sum[b] += ce.loss * static_cast<double>(ce.n_counted);
        r.tokens[b] += ce.n_counted;
      }
    }
    if (progress) progress(i, windows[i], f.lm_loss);
  }
  return r;
}

}  // namespace msa
