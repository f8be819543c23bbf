// msa-data synthetic: samples of a retrieval task (data/synthetic.h) written as token shards that
// msa-train reads as plain language-model data, one sample per --seq_len window.
//
// A shard cannot carry the task's masked targets, so a stored sample is laid out for next-token
// prediction: the task's sample of seq_len - pairs tokens, its query tail Q1 .. Qp followed each
// by its answer (Q1 A1 Q2 A2 ... Qp Ap), seq_len tokens in all. The target of each query position
// is then its answer; every other target (the filler's next token, the next query) is noise the
// loss cannot learn. Each shard holds whole samples back to back plus one filler token at its
// end, so that a window (seq_len + 1 tokens, advancing by seq_len) is exactly one sample.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/synthetic.h"

namespace msa {

// Checks the task and that seq_len holds a shard sample: the facts' span, then p query-answer
// pairs (at least span + 2 p + 1 tokens). Errors name msa-data's flags.
absl::Status validate_synthetic_shard_sample(const SyntheticConfig& config);

// Sample number `index` as a shard stores it (above): config.seq_len tokens, a pure function of
// (config, index).
std::vector<uint32_t> synthetic_shard_sample(const SyntheticConfig& config, uint64_t index);

struct SyntheticShardingOptions {
  SyntheticConfig config;
  int64_t samples = 1000;
  std::string output_dir;
  std::string prefix;  // <prefix>-NNNNN.tok; empty: the task's name
  // Samples per shard: as many whole samples as fit these tokens (at least one).
  int64_t shard_tokens = int64_t{1} << 24;
  bool overwrite = false;
};

struct SyntheticShardingResult {
  std::vector<std::string> shards;  // paths, in sample order
  int64_t tokens = 0;               // over all shards
  std::string metadata;             // <output_dir>/<prefix>.json: how they were made
};

// Writes the shards and their metadata file <prefix>.json (task, seed, lengths: what msa-train's
// resume fingerprint reads) into a staging directory and moves them into `output_dir` only when
// all are written, deleting the old shards there last (check_shard_dir: refused without
// `overwrite`).
// `progress(samples_done, samples)` is called as samples are made.
absl::StatusOr<SyntheticShardingResult> write_synthetic_shards(
    const SyntheticShardingOptions& options,
    const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace msa
