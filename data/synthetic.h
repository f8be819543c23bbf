// Synthetic long-context retrieval tasks whose answers sit at known positions
// (for tests, demos and the quality evaluation). Both are "associative recall":
// facts early or at some depth in a long filler context, asked about at the
// end.
//
// Vocabulary (ids below synthetic_vocab_size(), so a model with vocab >= 96 can
// learn them):
//   [0, 16)    filler tokens (random noise the model must ignore)
//   [16, 80)   fact tokens F(k, v) = 16 + 8 k + v: "key k has value v" (8 keys
//   x 8 values) [80, 88)   query tokens Q(k) = 80 + k: "what is the value of
//   key k?" [88, 96)   answer tokens A(v) = 88 + v
// A fact is one token so that retrieval is one content-addressed lookup (no
// induction circuit needed): what the task measures is whether attention, and
// MSA's block selection, can find the fact across the context.
//
// kv-recall: `pairs` facts with distinct keys placed at distinct random
// positions inside a
//   span of 4 * pairs tokens that starts at fractional depth `depth` of the
//   context, filler elsewhere; the last `pairs` positions query every key once
//   (in random order); the target at each query position is its answer token.
//   Every other target is ignored (-100).
// needle: kv-recall with a single fact (the needle) at exactly fractional depth
// `depth`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace msa {

enum class SyntheticTask { kKvRecall, kNeedle };

inline constexpr int64_t kSyntheticVocab = 96;
inline constexpr int kSyntheticFiller = 16, kSyntheticKeys = 8, kSyntheticValues = 8;
inline constexpr int kSyntheticFactBase = 16, kSyntheticQueryBase = 80, kSyntheticAnswerBase = 88;

absl::StatusOr<SyntheticTask> parse_synthetic_task(const std::string& name);
const char* synthetic_task_name(SyntheticTask task);

struct SyntheticConfig {
  SyntheticTask task = SyntheticTask::kKvRecall;
  int64_t seq_len = 256;
  int pairs = 4;      // kv-recall facts (needle: always 1)
  double depth = -1;  // fractional depth of the facts in [0, 1]; < 0: uniform
                      // random per sample
  uint64_t seed = 0;
};

// The facts of a sample (needle: 1, whatever `pairs` says) and the span of positions they are
// placed in (needle: 1, kv-recall: 4 per fact).
inline int synthetic_pairs(const SyntheticConfig& c) {
  return c.task == SyntheticTask::kNeedle ? 1 : c.pairs;
}
inline int64_t synthetic_fact_span(const SyntheticConfig& c) {
  return c.task == SyntheticTask::kNeedle ? 1 : 4 * int64_t{synthetic_pairs(c)};
}
// Checks sizes (seq_len long enough for the facts and queries, 1 <= pairs <=
// 8).
absl::Status validate(const SyntheticConfig& config);

struct SyntheticSample {
  std::vector<int32_t> tokens;            // seq_len
  std::vector<int32_t> targets;           // seq_len, -100 except at the answer positions
  std::vector<int64_t> answer_positions;  // where targets hold answers
  std::vector<int64_t> fact_positions;    // where the facts are
};

// Sample number `index` of the task: a pure function of (config, index).
SyntheticSample make_synthetic_sample(const SyntheticConfig& config, uint64_t index);

}  // namespace msa
