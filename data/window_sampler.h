// Deterministic distributed sampling of fixed-length training windows from
// token shards.
//
// Each shard of n tokens holds floor((n - 1) / seq_len) windows of seq_len + 1
// tokens, window i starting at token i * seq_len (inputs are its first seq_len
// tokens, targets its last seq_len). Windows are numbered across the shards in
// (sorted) file order; the last `val_fraction` of them form the validation
// split, the rest the training split.
//
// Training sample number n (counting every sample of every rank, micro-batch
// and step) reads training window perm_e(n mod W) of epoch e = n / W, where
// perm_e is a seeded bijection of [0, W) (a Feistel network with cycle walking:
// no table, O(1) memory). So:
//  - an epoch visits every training window exactly once;
//  - the sample a rank reads is a pure function of (seed, n): a resumed run
//    continues from its checkpoint's sample cursor, and the layout of the run
//    (dp size, batch) only changes which rank reads which n;
//  - ranks read disjoint sample numbers (see sample_number()).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/shard.h"

namespace msa {

// Sample number of sequence `i` of micro-batch `micro` of 1-based `step` on
// data-parallel rank `dp_rank`: every (step, micro, rank, i) gets its own
// number, consecutive over the global batch. The steps after `base_step`
// continue from sample `base_sample` (a resumed run passes its checkpoint's step
// and sample cursor, so resuming with another global batch, e.g. other dp or
// --batch_size, neither repeats nor skips samples; with the same global batch
// the numbers are those of the uninterrupted run).
int64_t sample_number(int64_t step, int micro, int grad_accum, int dp_rank, int dp_size,
                      int64_t batch, int64_t i, int64_t base_step = 0, int64_t base_sample = 0);

// A seeded pseudo-random permutation of [0, n).
class IndexPermutation {
 public:
  IndexPermutation(int64_t n, uint64_t seed);
  int64_t operator()(int64_t i) const;

 private:
  uint64_t round(int r, uint64_t half) const;
  int64_t n_;
  uint64_t seed_;
  int half_bits_;
};

// The shard at `path`, mapped once per process: the training and validation samplers of a run
// (and a resumed run's rebuilt ones) share one mapping per file instead of one each (the kernel
// caps a process's mappings at vm.max_map_count, 65530 by default), and its largest token is
// found in one scan, however many samplers check it. A file replaced since (another size, inode or
// modification time) is opened anew. Fails as ShardReader::open, or as check_vocab when a token is
// >= vocab_size.
absl::StatusOr<std::shared_ptr<const ShardReader>> open_shared_shard(const std::string& path,
                                                                     int64_t vocab_size);

class WindowSampler {
 public:
  // Opens every shard matching `glob` (open_shared_shard) and checks its tokens against
  // `vocab_size`.
  static absl::StatusOr<std::unique_ptr<WindowSampler>> open(const std::string& glob,
                                                             int64_t seq_len, int64_t vocab_size,
                                                             double val_fraction, uint64_t seed);
  int64_t seq_len() const { return seq_len_; }
  int64_t num_windows() const { return total_windows_; }
  int64_t num_train_windows() const { return total_windows_ - num_val_; }
  int64_t num_val_windows() const { return num_val_; }
  // Shared with every other sampler of the process over the same files (open_shared_shard).
  const std::vector<std::shared_ptr<const ShardReader>>& shards() const { return shards_; }

  // The training window read by sample number n, and the i-th validation
  // window.
  int64_t train_window(int64_t n) const;
  int64_t val_window(int64_t i) const { return num_train_windows() + i % num_val_; }
  // Copies the seq_len + 1 tokens of window `w` into out.
  void read_window(int64_t w, int32_t* out) const;
  int64_t total_tokens() const;
  std::string describe() const;

 private:
  WindowSampler() = default;
  int64_t seq_len_ = 0;
  uint64_t seed_ = 0;
  std::vector<std::shared_ptr<const ShardReader>> shards_;
  std::vector<int64_t> first_window_;  // per shard, then the total
  int64_t total_windows_ = 0, num_val_ = 0;
};

}  // namespace msa
