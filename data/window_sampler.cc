#include "data/window_sampler.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

#include "absl/strings/str_format.h"
#include "core/check.h"
#include "core/rng.h"
#include "core/status.h"

namespace msa {

int64_t sample_number(int64_t step, int micro, int grad_accum, int dp_rank, int dp_size,
                      int64_t batch, int64_t i, int64_t base_step, int64_t base_sample) {
  return base_sample + (((step - 1 - base_step) * grad_accum + micro) * dp_size + dp_rank) * batch +
         i;
}

IndexPermutation::IndexPermutation(int64_t n, uint64_t seed) : n_(n), seed_(seed) {
  MSA_CHECK(n > 0, "IndexPermutation: empty range");
  int bits = 2;
  while ((int64_t{1} << bits) < n) ++bits;
  half_bits_ = (bits + 1) / 2;
}

uint64_t IndexPermutation::round(int r, uint64_t half) const {
  const Philox4 x = philox4x32(seed_ ^ (0x9E3779B97F4A7C15ULL * (r + 1)), half);
  return (static_cast<uint64_t>(x.v[1]) << 32 | x.v[0]) & ((uint64_t{1} << half_bits_) - 1);
}

int64_t IndexPermutation::operator()(int64_t i) const {
  MSA_CHECK(i >= 0 && i < n_, "IndexPermutation: %d outside [0, %d)", i, n_);
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  uint64_t x = static_cast<uint64_t>(i);
  // A balanced Feistel network is a bijection of [0, 2^(2*half_bits)); walking
  // the cycle until the value lands inside [0, n) restricts it to a bijection
  // of [0, n).
  do {
    uint64_t left = x >> half_bits_, right = x & mask;
    for (int r = 0; r < 4; ++r) {
      const uint64_t next = left ^ round(r, right);
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= static_cast<uint64_t>(n_));
  return static_cast<int64_t>(x);
}

absl::StatusOr<std::shared_ptr<const ShardReader>> open_shared_shard(const std::string& path,
                                                                     int64_t vocab_size) {
  struct Identity {
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
    bool operator==(const Identity&) const = default;
  };
  struct Entry {
    Identity id;
    std::weak_ptr<const ShardReader> reader;
    uint32_t max_token = 0;
  };
  static std::mutex mu;
  static std::map<std::string, Entry> cache;
  struct stat st {};
  const bool known = ::stat(path.c_str(), &st) == 0;
  const Identity id{st.st_dev, st.st_ino, st.st_size,
                    static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  std::lock_guard<std::mutex> lock(mu);
  std::shared_ptr<const ShardReader> r;
  uint32_t max_token = 0;
  if (auto it = cache.find(path); known && it != cache.end() && it->second.id == id)
    if ((r = it->second.reader.lock())) max_token = it->second.max_token;
  if (!r) {
    MSA_ASSIGN_OR_RETURN(std::unique_ptr<ShardReader> opened, ShardReader::open(path));
    for (int64_t t = 0; t < opened->size(); ++t) max_token = std::max(max_token, opened->token(t));
    r = std::move(opened);
    if (known) cache[path] = Entry{id, r, max_token};
  }
  if (r->size() > 0 && static_cast<int64_t>(max_token) >= vocab_size) {
    absl::Status named = r->check_vocab(vocab_size);  // names the first such token
    if (named.ok())  // (only if the file changed between the scans)
      named = absl::InvalidArgumentError(absl::StrFormat(
          "%s: token id %d is >= the model's vocab_size %d", path, max_token, vocab_size));
    return named;
  }
  return r;
}

absl::StatusOr<std::unique_ptr<WindowSampler>> WindowSampler::open(const std::string& glob,
                                                                   int64_t seq_len,
                                                                   int64_t vocab_size,
                                                                   double val_fraction,
                                                                   uint64_t seed) {
  if (seq_len <= 0) return absl::InvalidArgumentError("invalid --seq_len: must be positive");
  if (!(val_fraction >= 0 && val_fraction < 1)) {
    return absl::InvalidArgumentError("invalid --val_fraction: must be in [0, 1)");
  }
  MSA_ASSIGN_OR_RETURN(std::vector<std::string> files, glob_files(glob));
  std::unique_ptr<WindowSampler> s(new WindowSampler());
  s->seq_len_ = seq_len;
  s->seed_ = seed;
  for (const std::string& f : files) {
    MSA_ASSIGN_OR_RETURN(std::shared_ptr<const ShardReader> r, open_shared_shard(f, vocab_size));
    s->first_window_.push_back(s->total_windows_);
    s->total_windows_ += std::max<int64_t>(0, (r->size() - 1) / seq_len);
    s->shards_.push_back(std::move(r));
  }
  s->first_window_.push_back(s->total_windows_);
  if (val_fraction > 0) {
    // The ceiling of the double product (0.07 x 100 = 7.000000000000001 holds out 8 windows, not
    // 7), kept as it is: a run resumed after a change of rule would move windows between the
    // splits, and one it trained on would become validation.
    s->num_val_ =
        std::max<int64_t>(1, static_cast<int64_t>(std::ceil(val_fraction * s->total_windows_)));
  }
  if (s->num_train_windows() < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "'%s': %d tokens in %d shard(s) give %d windows of %d "
        "+ 1 tokens, %d of them held out "
        "for validation: too little data for --seq_len=%d",
        glob, s->total_tokens(), files.size(), s->total_windows_, seq_len, s->num_val_, seq_len));
  }
  return s;
}

int64_t WindowSampler::train_window(int64_t n) const {
  const int64_t W = num_train_windows();
  const int64_t epoch = n / W;
  const IndexPermutation perm(W, seed_ * 0x100000001B3ULL + static_cast<uint64_t>(epoch));
  return perm(n % W);
}

void WindowSampler::read_window(int64_t w, int32_t* out) const {
  MSA_CHECK(w >= 0 && w < total_windows_, "window %d outside [0, %d)", w, total_windows_);
  const auto it = std::upper_bound(first_window_.begin(), first_window_.end(), w);
  const size_t shard = static_cast<size_t>(it - first_window_.begin()) - 1;
  const int64_t local = w - first_window_[shard];
  shards_[shard]->read(local * seq_len_, seq_len_ + 1, out);
}

int64_t WindowSampler::total_tokens() const {
  int64_t tokens = 0;
  for (const auto& s : shards_) tokens += s->size();
  return tokens;
}

std::string WindowSampler::describe() const {
  return absl::StrFormat("%d shard(s), %d tokens, %d training + %d validation windows of %d",
                         shards_.size(), total_tokens(), num_train_windows(), num_val_, seq_len_);
}

}  // namespace msa
