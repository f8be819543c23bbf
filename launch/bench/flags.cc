#include "launch/bench/flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "launch/bench/model_preset.h"
#include "launch/program_usage.h"
#include "model/transformer.h"

namespace msa::bench {

std::vector<int64_t> parse_lengths(const std::string& list, const char* flag) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1) {
      std::fprintf(stderr, "msa-bench: invalid --%s entry '%s' (want positive integers)\n", flag,
                   std::string(part).c_str());
      std::exit(1);
    }
    out.push_back(v);
  }
  return out;
}

namespace {

// A flag the chosen benchmark does not read, given anyway, was meant for another one
// (`msa-bench step --seqs=16384` ran step's --model_seqs): refused, naming the benchmarks that
// read it.
std::string refuse_other_benchmarks_flags(const std::string& which) {
  using absl::GetFlagReflectionHandle;
  const std::vector<std::pair<const absl::CommandLineFlag*, const char*>> owned = {
      {&GetFlagReflectionHandle(FLAGS_iters), "msa and dense"},
      {&GetFlagReflectionHandle(FLAGS_seqs), "msa"},
      {&GetFlagReflectionHandle(FLAGS_fwd_only_seqs), "msa"},
      {&GetFlagReflectionHandle(FLAGS_heads), "msa"},
      {&GetFlagReflectionHandle(FLAGS_groups), "msa"},
      {&GetFlagReflectionHandle(FLAGS_head_dim), "msa"},
      {&GetFlagReflectionHandle(FLAGS_selection), "msa"},
      {&GetFlagReflectionHandle(FLAGS_cudnn), "msa"},
      {&GetFlagReflectionHandle(FLAGS_recall_stride), "msa"},
      {&GetFlagReflectionHandle(FLAGS_warmup_kl), "msa"},
      {&GetFlagReflectionHandle(FLAGS_cp_shards), "msa"},
      {&GetFlagReflectionHandle(FLAGS_model_seqs), "dense and step"},
      {&GetFlagReflectionHandle(FLAGS_model), "dense and step"},
      {&GetFlagReflectionHandle(FLAGS_layers), "step"},  // dense times one layer
      {&GetFlagReflectionHandle(FLAGS_block_size), "msa and step"},
      {&GetFlagReflectionHandle(FLAGS_topk), "msa and step"},
      {&GetFlagReflectionHandle(FLAGS_index_dim), "msa and step"},
      {&GetFlagReflectionHandle(FLAGS_attention), "step"},
      {&GetFlagReflectionHandle(FLAGS_recompute), "step"},
      {&GetFlagReflectionHandle(FLAGS_steps), "step"},
      {&GetFlagReflectionHandle(FLAGS_peak_tflops), "step"}};
  for (const auto& [flag, readers] : owned) {
    const std::vector<std::string> who = absl::StrSplit(readers, " and ");
    if (std::find(who.begin(), who.end(), which) == who.end() && flag_set(*flag))
      return absl::StrFormat("invalid --%s: only the %s benchmark%s read%s it, not %s",
                             flag->Name(), readers, who.size() > 1 ? "s" : "",
                             who.size() > 1 ? "" : "s", which);
  }
  return "";
}

}  // namespace

std::string check_flags(const std::string& which) {
  auto at_least = [](const char* flag, int64_t value, int64_t low) {
    return value >= low ? std::string()
                        : absl::StrFormat("invalid --%s: %d (at least %d)", flag, value, low);
  };
  std::string bad = refuse_other_benchmarks_flags(which);
  auto check = [&](std::string why) {
    if (bad.empty()) bad = std::move(why);
  };
  check(at_least("iters", absl::GetFlag(FLAGS_iters), 1));
  check(at_least("batch", absl::GetFlag(FLAGS_batch), 1));
  check(at_least("block_size", absl::GetFlag(FLAGS_block_size), 1));
  check(at_least("topk", absl::GetFlag(FLAGS_topk), 1));
  check(at_least("index_dim", absl::GetFlag(FLAGS_index_dim), 1));
  if (which == "msa") {
    const int H = absl::GetFlag(FLAGS_heads), G = absl::GetFlag(FLAGS_groups);
    check(at_least("heads", H, 1));
    check(at_least("groups", G, 1));
    if (bad.empty() && H % G != 0)
      check(absl::StrFormat("invalid --heads: %d is not a multiple of --groups %d", H, G));
    check(at_least("head_dim", absl::GetFlag(FLAGS_head_dim), 1));
    check(at_least("recall_stride", absl::GetFlag(FLAGS_recall_stride), 0));
    check(at_least("cp_shards", absl::GetFlag(FLAGS_cp_shards), 0));
    if (absl::GetFlag(FLAGS_cp_shards) == 1)
      check(
          "invalid --cp_shards: 1 (one shard is the whole sequence; 0 turns the table off, 2 "
          "or more split it)");
    const std::string selection = absl::GetFlag(FLAGS_selection);
    if (selection != "random" && selection != "sink")
      check("invalid --selection: '" + selection + "' (random or sink)");
    // The sink selection is the first k - 1 blocks beside the local one: at least one of them.
    if (selection == "sink" && absl::GetFlag(FLAGS_topk) < 2)
      check(
          absl::StrFormat("invalid --topk: %d with --selection=sink (at least 2: the local "
                          "block and the first block)",
                          absl::GetFlag(FLAGS_topk)));
    const std::vector<int64_t> seqs = parse_lengths(absl::GetFlag(FLAGS_seqs), "seqs");
    // The context-parallel shares split every --seqs length into 2 C chunks of whole blocks (the
    // zig-zag layout), one sequence at a time; a length that does not split was skipped unseen.
    if (const int C = absl::GetFlag(FLAGS_cp_shards); bad.empty() && C > 1) {
      if (absl::GetFlag(FLAGS_batch) != 1)
        check(absl::StrFormat("invalid --cp_shards: %d needs --batch=1, not %d", C,
                              absl::GetFlag(FLAGS_batch)));
      const int64_t unit = int64_t{2} * C * absl::GetFlag(FLAGS_block_size);
      for (int64_t T : seqs)
        if (T % unit != 0)
          check(absl::StrFormat(
              "invalid --cp_shards: %d does not split --seqs length %d into 2 x %d chunks of "
              "whole --block_size=%d blocks (the length must be a multiple of %d)",
              C, T, C, absl::GetFlag(FLAGS_block_size), unit));
    }
    // An empty list ran nothing and printed a bare header.
    if (seqs.empty() && parse_lengths(absl::GetFlag(FLAGS_fwd_only_seqs), "fwd_only_seqs").empty())
      check("invalid --seqs: no length (give at least one, here or in --fwd_only_seqs)");
  } else {
    check(at_least("layers", absl::GetFlag(FLAGS_layers), 0));
    check(at_least("steps", absl::GetFlag(FLAGS_steps), 1));
    if (!(absl::GetFlag(FLAGS_peak_tflops) > 0))
      check(absl::StrFormat("invalid --peak_tflops: %g (> 0)", absl::GetFlag(FLAGS_peak_tflops)));
    if (parse_lengths(absl::GetFlag(FLAGS_model_seqs), "model_seqs").empty())
      check("invalid --model_seqs: no length (give at least one)");
    if (which == "step") {
      const std::string a = absl::GetFlag(FLAGS_attention);
      if (a != "dense" && a != "msa" && a != "warmup" && a != "both" && a != "all")
        check("invalid --attention: '" + a + "' (dense, msa, warmup, both or all)");
      if (const auto r = parse_recompute(absl::GetFlag(FLAGS_recompute)); !r.ok())
        check(std::string(r.status().message()));
    }
    if (bad.empty()) {
      // The preset with the MSA flags applied, as the benchmark builds it.
      const ModelConfig c = preset_model(absl::GetFlag(FLAGS_model), which == "step");
      if (const absl::Status s = c.validate(); !s.ok()) check(std::string(s.message()));
    }
  }
  return bad;
}

}  // namespace msa::bench
