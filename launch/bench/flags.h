// msa-bench's flags (defined in launch/msa_bench_main.cc; this folder is compiled into msa-bench
// only, so msa-train's --help does not list them).
#pragma once

#include <cstdint>
#include <string>

#include <vector>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, seqs);
ABSL_DECLARE_FLAG(std::string, fwd_only_seqs);
ABSL_DECLARE_FLAG(std::string, model_seqs);
ABSL_DECLARE_FLAG(int, heads);
ABSL_DECLARE_FLAG(int, groups);
ABSL_DECLARE_FLAG(int, head_dim);
ABSL_DECLARE_FLAG(int, block_size);
ABSL_DECLARE_FLAG(int, topk);
ABSL_DECLARE_FLAG(int, index_dim);
ABSL_DECLARE_FLAG(int, iters);
ABSL_DECLARE_FLAG(int, cp_shards);
ABSL_DECLARE_FLAG(bool, cudnn);
ABSL_DECLARE_FLAG(bool, warmup_kl);
ABSL_DECLARE_FLAG(int, recall_stride);
ABSL_DECLARE_FLAG(std::string, selection);
ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int, layers);
ABSL_DECLARE_FLAG(int, batch);
ABSL_DECLARE_FLAG(std::string, attention);
ABSL_DECLARE_FLAG(std::string, recompute);
ABSL_DECLARE_FLAG(int, steps);
ABSL_DECLARE_FLAG(double, peak_tflops);

namespace msa::bench {

// "8192,32768" -> {8192, 32768}; exits with a message naming `flag` on a bad entry.
std::vector<int64_t> parse_lengths(const std::string& list, const char* flag);

// The flags benchmark `which` (msa, dense or step) reads, checked before any device work (and on
// a machine without a GPU too): "" when they are usable, else a message naming the flag.
std::string check_flags(const std::string& which);

}  // namespace msa::bench
