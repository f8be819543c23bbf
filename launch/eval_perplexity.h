// Validation loss by position in the context (msa-eval --data): the mean next-token loss of the
// tokens at positions [b_i, b_{i+1}) of fixed-length windows, for the buckets b_0 = 0 < b_1 < ...
// < seq_len. A long-context model should predict later positions at least as well as early ones;
// a model whose loss rises past some position (its training length, its attention budget) shows
// it here.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/shard.h"
#include "model/transformer.h"

namespace msa {

// The windows of seq_len + 1 tokens of some token shards, laid out as msa-train's (window k of a
// shard of n tokens starts at token k * seq_len, floor((n - 1) / seq_len) per shard, numbered
// across the shards in order). Unlike training, no window is held out: give shards the model
// did not train on.
class EvalShards {
 public:
  // `spec`: a glob, or a comma-separated list of globs (each expanded and sorted; the files keep
  // the order of the list). Checks every token against `vocab_size`. A shard too short for one
  // window is skipped with a warning on stderr; errors name --data and the file: a glob matching
  // nothing, an unreadable or corrupt shard, a token outside the vocabulary, or no shard holding
  // a window (naming the longest shard and the --seq_len it would need).
  static absl::StatusOr<std::unique_ptr<EvalShards>> open(const std::string& spec, int64_t seq_len,
                                                          int64_t vocab_size);

  int64_t seq_len() const { return seq_len_; }
  int64_t num_windows() const { return first_window_.back(); }
  // Copies the seq_len + 1 tokens of window `w` into out.
  void read_window(int64_t w, int32_t* out) const;
  // Checks every token against the vocabulary of another checkpoint (named in the error).
  absl::Status check_vocab(int64_t vocab_size, const std::string& checkpoint) const;
  // "shard.tok tokens [a, b)": where window `w` lies.
  std::string describe_window(int64_t w) const;
  // The EOS id that separates the shards' documents (their msa-data metadata: shards_eos_id,
  // its errors naming --pack_documents), for evaluating a model trained on packed documents.
  absl::StatusOr<int32_t> eos_id(int64_t vocab_size) const;

 private:
  EvalShards() = default;
  int64_t seq_len_ = 0;
  std::vector<std::unique_ptr<ShardReader>> shards_;  // those holding at least one window
  std::vector<int64_t> first_window_;                 // per shard, then the total
};

// `count` distinct windows of [0, num_windows), evenly spread and increasing:
// floor((i + u) * num_windows / count) for i < count, u in [0, 1) drawn from `seed`.
// InvalidArgument naming --eval_windows when count < 1 or count > num_windows.
absl::StatusOr<std::vector<int64_t>> select_eval_windows(int64_t num_windows, int64_t count,
                                                         uint64_t seed);

// The bucket starts: `text` ("0,1024,4096") parsed, or when empty the default: 0, then doubling
// from min(1024, the largest power of two <= seq_len / 4) while below seq_len. Bucket i holds
// positions [starts[i], starts[i + 1]) (the last ends at seq_len). InvalidArgument naming
// --position_buckets unless the starts are integers, begin at 0, increase strictly and stay
// below seq_len.
absl::StatusOr<std::vector<int64_t>> parse_position_buckets(const std::string& text,
                                                            int64_t seq_len);

// Sums over windows of one model's next-token loss by position bucket.
struct PositionLoss {
  std::vector<double> loss_sum;  // per bucket: sum of the tokens' cross entropy (nats)
  std::vector<int64_t> tokens;   // per bucket: tokens counted
  double mean(size_t bucket) const;
  double overall_mean() const;  // over every counted token
  int64_t total_tokens() const;
};

// Called after each window: its index among `windows`, the window and its mean loss.
using WindowProgressFn = std::function<void(size_t i, int64_t window, double loss)>;

// Runs `model` (no gradients, MSA layers in `mode`) on each window of `windows` (one window per
// forward pass) and sums the loss of the target of input position t into the bucket holding t,
// using the model's own cross-entropy kernel on the rows of its logits. `starts` as returned by
// parse_position_buckets for shards.seq_len(). Windows are read on the CPU and moved to the
// model's device. With `documents_eos`, each window's documents (starting after every EOS, as
// msa-train --pack_documents trains them) attend and take RoPE positions on their own, and t is
// the position in the token's document (the tokens before it that the model sees), so a bucket
// counts as many tokens as the documents reach into it.
PositionLoss evaluate_loss_by_position(Transformer& model, const EvalShards& shards,
                                       const std::vector<int64_t>& windows,
                                       const std::vector<int64_t>& starts, MsaMode mode,
                                       const WindowProgressFn& progress = nullptr,
                                       std::optional<int32_t> documents_eos = std::nullopt);

}  // namespace msa
