// msa-bench and msa-allreduce-bench refuse unusable flags with a message naming the flag, before
// any device work and on a machine without a GPU too (they crashed, hung or ran something else).
#include <string>
#include <utility>

#include "gtest/gtest.h"
#include "tests/testing/command.h"

namespace {

using msa::test::run_program;

TEST(BenchCliTest, MsaBenchRefusesUnusableFlagsNamingThem) {
  const std::pair<const char*, const char*> cases[] = {
      {"msa --groups=0", "invalid --groups: 0"},
      {"msa --heads=6 --groups=4", "invalid --heads: 6 is not a multiple of --groups 4"},
      {"msa --iters=0", "invalid --iters: 0"},
      {"msa --selection=best", "invalid --selection: 'best'"},
      {"msa --seqs=0", "invalid --seqs entry '0'"},
      {"step --batch=-1", "invalid --batch: -1"},
      {"step --attention=sparse", "invalid --attention: 'sparse'"},
      {"step --recompute=some", "invalid --recompute"},
      {"step --topk=0", "invalid --topk: 0"},
      {"dense --model=huge", "unknown --model 'huge'"},
      {"step --layers=-1", "invalid --layers: -1"},
      {"msa extra", "unexpected argument 'extra'"},
      // Another benchmark's flags (step --seqs ran step's --model_seqs without a word).
      {"step --seqs=16384", "invalid --seqs: only the msa benchmark reads it, not step"},
      {"msa --model_seqs=8192",
       "invalid --model_seqs: only the dense and step benchmarks read it, not msa"},
      {"dense --topk=8", "invalid --topk: only the msa and step benchmarks read it, not dense"},
      {"msa --cp_shards=1", "invalid --cp_shards: 1"},
      // Lengths the shares cannot split: the cp table was left out without a word.
      {"msa --cp_shards=3", "invalid --cp_shards: 3 does not split --seqs length 8192"},
      {"msa --cp_shards=2 --batch=2", "invalid --cp_shards: 2 needs --batch=1"},
      // The sink selection's share read the row's element -1 at k = 1.
      {"msa --selection=sink --topk=1", "invalid --topk: 1 with --selection=sink"},
      {"step --iters=9", "invalid --iters: only the msa and dense benchmarks read it, not step"},
      {"", "expected one benchmark name"},
      // Accepted and ignored (dense times one layer), or an empty list that ran nothing.
      {"dense --layers=3", "invalid --layers: only the step benchmark reads it, not dense"},
      {"msa --seqs=", "invalid --seqs: no length"},
      {"msa --seqs=, --fwd_only_seqs=", "invalid --seqs: no length"},
      {"step --model_seqs=", "invalid --model_seqs: no length"},
  };
  for (const auto& [args, message] : cases) {
    const auto [rc, out] = run_program("msa-bench", args);
    EXPECT_EQ(rc, 1) << args << "\n" << out;
    EXPECT_NE(out.find(message), std::string::npos) << args << "\n" << out;
  }
}

TEST(BenchCliTest, AllreduceBenchRefusesUnusableFlagsNamingThem) {
  const std::pair<const char*, const char*> cases[] = {
      {"--iters=0", "invalid --iters: 0"},          // was a segfault (median of nothing)
      {"--mb=-1", "invalid --mb: -1"},              // was an abort with a stack trace
      {"--mb=17592186044416", "invalid --mb"},      // 2^44 MiB wrapped to a 0-byte buffer
      {"--device=gpu", "invalid --device: 'gpu'"},  // ran on the CPU
      {"--dtype=f64", "invalid --dtype: 'f64'"},    // ran as f32
      {"--iters=2 stray", "unexpected argument 'stray'"},
  };
  for (const auto& [args, message] : cases) {
    const auto [rc, out] = run_program("msa-allreduce-bench", args);
    EXPECT_EQ(rc, 1) << args << "\n" << out;
    EXPECT_NE(out.find(message), std::string::npos) << args << "\n" << out;
  }
}

}  // namespace
