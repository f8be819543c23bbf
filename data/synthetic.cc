#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>

#include "absl/strings/str_format.h"
#include "core/rng.h"

namespace msa {
namespace {

// Draws from one counter-based stream per sample.
class SampleRng {
 public:
  SampleRng(uint64_t seed, uint64_t index) : key_(rng_substream(seed, index)) {}
  uint32_t below(uint32_t n) { return philox4x32(key_, counter_++).v[0] % n; }
  double uniform() { return (philox4x32(key_, counter_++).v[0] >> 8) * (1.0 / 16777216.0); }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

}  // namespace

absl::StatusOr<SyntheticTask> parse_synthetic_task(const std::string& name) {
  if (name == "kv-recall") return SyntheticTask::kKvRecall;
  if (name == "needle") return SyntheticTask::kNeedle;
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown synthetic task '%s' (expected kv-recall or needle)", name));
}

const char* synthetic_task_name(SyntheticTask task) {
  return task == SyntheticTask::kKvRecall ? "kv-recall" : "needle";
}

absl::Status validate(const SyntheticConfig& c) {
  const int pairs = synthetic_pairs(c);
  if (pairs < 1 || pairs > kSyntheticKeys) {
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --pairs=%d: must be in [1, %d]", c.pairs, kSyntheticKeys));
  }
  const int64_t span = synthetic_fact_span(c);
  if (c.seq_len < span + pairs + 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --seq_len=%d: the %s task needs at least %d tokens", c.seq_len,
                        synthetic_task_name(c.task), span + pairs + 1));
  }
  if (c.seq_len > std::numeric_limits<int32_t>::max())
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --seq_len=%d: must be < 2^31", c.seq_len));
  if (!std::isfinite(c.depth) || c.depth > 1)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --depth=%g: must be finite and <= 1 (< 0: random)", c.depth));
  return absl::OkStatus();
}

SyntheticSample make_synthetic_sample(const SyntheticConfig& c, uint64_t index) {
  SampleRng rng(c.seed, index);
  const int pairs = synthetic_pairs(c);
  const int64_t T = c.seq_len;
  const int64_t span = synthetic_fact_span(c);
  SyntheticSample s;
  s.tokens.resize(T);
  s.targets.assign(T, -100);
  for (int64_t t = 0; t < T; ++t) s.tokens[t] = static_cast<int32_t>(rng.below(kSyntheticFiller));

  // Distinct keys, random values.
  std::vector<int> keys(kSyntheticKeys);
  std::iota(keys.begin(), keys.end(), 0);
  for (int i = 0; i < pairs; ++i) std::swap(keys[i], keys[i + rng.below(kSyntheticKeys - i)]);
  std::vector<int> values(pairs);
  for (int i = 0; i < pairs; ++i) values[i] = static_cast<int>(rng.below(kSyntheticValues));

  // The span of facts starts at fractional depth `depth` of the room before the
  // queries.
  const int64_t room = T - pairs - span;  // last valid span start
  const double depth = c.depth >= 0 ? c.depth : rng.uniform();
  const int64_t start = std::min<int64_t>(room, static_cast<int64_t>(depth * room + 0.5));
  std::vector<int64_t> slots(span);
  std::iota(slots.begin(), slots.end(), start);
  for (int i = 0; i < pairs; ++i) std::swap(slots[i], slots[i + rng.below(span - i)]);
  for (int i = 0; i < pairs; ++i) {
    s.tokens[slots[i]] = kSyntheticFactBase + kSyntheticValues * keys[i] + values[i];
    s.fact_positions.push_back(slots[i]);
  }
  std::sort(s.fact_positions.begin(), s.fact_positions.end());

  // Queries: every key once, in random order, at the last `pairs` positions.
  std::vector<int> order(pairs);
  std::iota(order.begin(), order.end(), 0);
  for (int i = 0; i < pairs; ++i) std::swap(order[i], order[i + rng.below(pairs - i)]);
  for (int i = 0; i < pairs; ++i) {
    const int64_t t = T - pairs + i;
    s.tokens[t] = kSyntheticQueryBase + keys[order[i]];
    s.targets[t] = kSyntheticAnswerBase + values[order[i]];
    s.answer_positions.push_back(t);
  }
  return s;
}

}  // namespace msa
