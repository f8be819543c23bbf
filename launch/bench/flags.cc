#include "launch/bench/flags.h"

#include <cstdio>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "launch/bench/model_preset.h"
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

std::string check_flags(const std::string& which) {
  auto at_least = [](const char* flag, int64_t value, int64_t low) {
    return value >= low ? std::string()
                        : absl::StrFormat("invalid --%s: %d (at least %d)", flag, value, low);
  };
  std::string bad;
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
    const std::string selection = absl::GetFlag(FLAGS_selection);
    if (selection != "random" && selection != "sink")
      check("invalid --selection: '" + selection + "' (random or sink)");
    parse_lengths(absl::GetFlag(FLAGS_seqs), "seqs");
    parse_lengths(absl::GetFlag(FLAGS_fwd_only_seqs), "fwd_only_seqs");
  } else {
    check(at_least("layers", absl::GetFlag(FLAGS_layers), 0));
    check(at_least("steps", absl::GetFlag(FLAGS_steps), 1));
    if (!(absl::GetFlag(FLAGS_peak_tflops) > 0))
      check(absl::StrFormat("invalid --peak_tflops: %g (> 0)", absl::GetFlag(FLAGS_peak_tflops)));
    parse_lengths(absl::GetFlag(FLAGS_model_seqs), "model_seqs");
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
