#include "data/synthetic_shards.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/shard.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

// The task's own sample, p tokens shorter: its queries then end where the answers begin.
SyntheticConfig inner_config(const SyntheticConfig& c) {
  SyntheticConfig inner = c;
  inner.seq_len = c.seq_len - synthetic_pairs(c);
  return inner;
}

// The shards, written into a staging directory and moved into place only when all are written.
absl::StatusOr<SyntheticShardingResult> write_staged(
    const SyntheticShardingOptions& o, const std::string& prefix, int digits, int64_t per_shard,
    int64_t shards, const std::vector<std::string>& old_files,
    const std::function<void(int64_t, int64_t)>& progress) {
  MSA_ASSIGN_OR_RETURN(std::unique_ptr<ShardStagingDir> staging,
                       ShardStagingDir::create(o.output_dir));
  SyntheticShardingResult r;
  std::vector<std::string> names;
  std::vector<uint32_t> tokens;
  for (int64_t s = 0; s < shards; ++s) {
    const int64_t first = s * per_shard, last = std::min(o.samples, first + per_shard);
    tokens.clear();
    for (int64_t i = first; i < last; ++i) {
      const std::vector<uint32_t> sample =
          synthetic_shard_sample(o.config, static_cast<uint64_t>(i));
      tokens.insert(tokens.end(), sample.begin(), sample.end());
      if (progress) progress(i + 1, o.samples);
    }
    tokens.push_back(0);  // the last window's last target: a filler token
    const std::string name = absl::StrFormat("%s-%0*d.tok", prefix, digits, s);
    MSA_RETURN_IF_ERROR(write_shard(staging->path() + "/" + name, tokens, TokenWidth::kU16));
    names.push_back(name);
    r.shards.push_back(o.output_dir + "/" + name);
    r.tokens += static_cast<int64_t>(tokens.size());
  }
  // The metadata file moves last (shards without it are from an interrupted commit): how the
  // shards were made, which msa-train's resume fingerprint reads.
  const std::string metadata_name = prefix + ".json";
  nlohmann::ordered_json j;
  j["written_by"] = "msa-data synthetic";
  j["task"] = synthetic_task_name(o.config.task);
  j["layout"] = "each query followed by its answer";
  j["seq_len"] = o.config.seq_len;
  j["pairs"] = synthetic_pairs(o.config);
  j["depth"] = o.config.depth;
  j["seed"] = o.config.seed;
  j["samples"] = o.samples;
  j["vocab_size"] = kSyntheticVocab;
  j["shard_tokens"] = o.shard_tokens;
  j["shards"] = names;
  {
    const std::string path = staging->path() + "/" + metadata_name;
    std::ofstream f(path, std::ios::trunc);
    f << j.dump(2) << "\n";
    f.close();
    if (!f) return absl::InternalError(absl::StrFormat("%s: cannot write metadata", path));
  }
  names.push_back(metadata_name);
  r.metadata = o.output_dir + "/" + metadata_name;
  MSA_RETURN_IF_ERROR(staging->commit(o.output_dir, old_files, names));
  return r;
}

}  // namespace

absl::Status validate_synthetic_shard_sample(const SyntheticConfig& c) {
  const int pairs = synthetic_pairs(c);
  const int64_t span = synthetic_fact_span(c);
  // (validate() checks the pairs, and a length for the task's own layout, which is shorter.)
  if (pairs >= 1 && pairs <= kSyntheticKeys && c.seq_len < span + 2 * pairs + 1)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --seq_len=%d: a %s shard sample (its facts, then %d queries each followed by "
        "its answer) needs at least %d tokens",
        c.seq_len, synthetic_task_name(c.task), pairs, span + 2 * pairs + 1));
  return validate(c);
}

std::vector<uint32_t> synthetic_shard_sample(const SyntheticConfig& c, uint64_t index) {
  const SyntheticConfig inner = inner_config(c);
  const SyntheticSample s = make_synthetic_sample(inner, index);
  const int pairs = synthetic_pairs(c);
  const int64_t queries = inner.seq_len - pairs;  // where the inner sample's queries start
  std::vector<uint32_t> out(s.tokens.begin(), s.tokens.begin() + queries);
  out.reserve(c.seq_len);
  for (int i = 0; i < pairs; ++i) {
    out.push_back(static_cast<uint32_t>(s.tokens[queries + i]));
    out.push_back(static_cast<uint32_t>(s.targets[queries + i]));
  }
  return out;
}

absl::StatusOr<SyntheticShardingResult> write_synthetic_shards(
    const SyntheticShardingOptions& o, const std::function<void(int64_t, int64_t)>& progress) {
  MSA_RETURN_IF_ERROR(validate_synthetic_shard_sample(o.config));
  if (o.output_dir.empty()) return absl::InvalidArgumentError("invalid --output: required");
  if (o.samples < 1) return absl::InvalidArgumentError("invalid --samples: must be >= 1");
  if (o.shard_tokens < 1) return absl::InvalidArgumentError("invalid --shard_tokens: must be >= 1");
  const int64_t L = o.config.seq_len;
  // msa-train's sampler reads up to 2^40 tokens' worth of windows per run comfortably; a larger
  // request is a typo (and would fill the disk).
  if (o.samples > (int64_t{1} << 40) / L)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --samples: %d samples of %d tokens is more than 2^40 tokens", o.samples, L));
  const int64_t per_shard = std::max<int64_t>(1, o.shard_tokens / L);
  const int64_t shards = (o.samples + per_shard - 1) / per_shard;
  // Names that sort in sample order: five digits, more past 99999 shards.
  const int digits = std::max<int>(5, static_cast<int>(absl::StrFormat("%d", shards - 1).size()));
  const std::string prefix =
      o.prefix.empty() ? std::string(synthetic_task_name(o.config.task)) : o.prefix;

  struct stat st;
  const bool created_output = ::stat(o.output_dir.c_str(), &st) != 0;
  MSA_ASSIGN_OR_RETURN(const std::vector<std::string> old_files,
                       check_shard_dir(o.output_dir, o.overwrite));
  MSA_RETURN_IF_ERROR(check_metadata_slot(o.output_dir, prefix, o.overwrite));
  absl::StatusOr<SyntheticShardingResult> result =
      write_staged(o, prefix, digits, per_shard, shards, old_files, progress);
  // A failed run leaves no directory it made (the staging directory inside it is gone already).
  if (!result.ok() && created_output) ::rmdir(o.output_dir.c_str());
  return result;
}

}  // namespace msa
