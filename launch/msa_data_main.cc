// msa-data: writes token shards for msa-train.
//   msa-data text --input=a.txt,b.txt --output=DIR [--shard_tokens=N]
//   msa-data synthetic --task=kv-recall|needle --seq_len=N --samples=N
//   --output=DIR [--depth=D]
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/status.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/text_tokenizer.h"
#include "launch/program_usage.h"

ABSL_FLAG(std::string, input, "", "text: comma-separated input files, one document each.");
ABSL_FLAG(std::string, output, "", "Output directory for the shards (created if missing).");
ABSL_FLAG(bool, overwrite, false,
          "Delete the shards (*.tok) already in --output first; without it, msa-data refuses an "
          "--output that holds shards (a glob would mix stale shards with the new ones).");
ABSL_FLAG(std::string, prefix, "",
          "Shard file prefix (default: 'train' for text, the task name "
          "for synthetic).");
ABSL_FLAG(int64_t, shard_tokens, 1 << 24, "text: tokens per shard.");
ABSL_FLAG(std::string, task, "kv-recall", "synthetic: 'kv-recall' or 'needle' (docs/data.md).");
ABSL_FLAG(int64_t, seq_len, 4096, "synthetic: tokens per sample.");
ABSL_FLAG(int64_t, samples, 1000, "synthetic: number of samples (one shard, samples x seq_len).");
ABSL_FLAG(int, pairs, 4, "synthetic kv-recall: facts per sample (1..8).");
ABSL_FLAG(double, depth, -1, "synthetic: fractional depth of the facts (< 0: random).");
ABSL_FLAG(uint64_t, seed, 1, "synthetic: seed.");

namespace {

void progress_bar(int64_t done, int64_t total) {
  const int width = 40;
  const double frac = total > 0 ? static_cast<double>(done) / total : 1.0;
  const int filled = static_cast<int>(frac * width);
  std::fprintf(stderr, "\r[%s%s] %5.1f%% %lld / %lld bytes", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), 100 * frac, static_cast<long long>(done),
               static_cast<long long>(total));
  if (done >= total) std::fprintf(stderr, "\n");
}

absl::Status run_text() {
  msa::TextShardingOptions o;
  for (absl::string_view f : absl::StrSplit(absl::GetFlag(FLAGS_input), ',', absl::SkipEmpty()))
    o.inputs.emplace_back(f);
  o.output_dir = absl::GetFlag(FLAGS_output);
  if (o.output_dir.empty()) return absl::InvalidArgumentError("invalid --output: required");
  if (!absl::GetFlag(FLAGS_prefix).empty()) o.prefix = absl::GetFlag(FLAGS_prefix);
  o.shard_tokens = absl::GetFlag(FLAGS_shard_tokens);
  o.overwrite = absl::GetFlag(FLAGS_overwrite);
  MSA_ASSIGN_OR_RETURN(msa::TextShardingResult r, msa::write_text_shards(o, progress_bar));
  std::printf(
      "msa-data: %lld documents, %lld tokens (byte-level, EOS = %u, "
      "vocab %lld) in %zu "
      "shard(s) under %s\n",
      static_cast<long long>(r.documents), static_cast<long long>(r.tokens), msa::kByteEos,
      static_cast<long long>(msa::kByteVocab), r.shards.size(), o.output_dir.c_str());
  return absl::OkStatus();
}

absl::Status run_synthetic() {
  msa::SyntheticConfig c;
  MSA_ASSIGN_OR_RETURN(c.task, msa::parse_synthetic_task(absl::GetFlag(FLAGS_task)));
  c.seq_len = absl::GetFlag(FLAGS_seq_len);
  c.pairs = absl::GetFlag(FLAGS_pairs);
  c.depth = absl::GetFlag(FLAGS_depth);
  c.seed = absl::GetFlag(FLAGS_seed);
  MSA_RETURN_IF_ERROR(msa::validate(c));
  const std::string dir = absl::GetFlag(FLAGS_output);
  if (dir.empty()) return absl::InvalidArgumentError("invalid --output: required");
  const int64_t samples = absl::GetFlag(FLAGS_samples);
  if (samples < 1) return absl::InvalidArgumentError("invalid --samples: must be >= 1");
  // One shard of samples x seq_len tokens (+1) in memory: refuse products past 2^40 tokens.
  if (samples > (int64_t{1} << 40) / c.seq_len)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --samples: %d samples of %d tokens is more than 2^40 tokens", samples, c.seq_len));
  std::string prefix = absl::GetFlag(FLAGS_prefix);
  if (prefix.empty()) prefix = msa::synthetic_task_name(c.task);
  MSA_RETURN_IF_ERROR(msa::prepare_shard_dir(dir, absl::GetFlag(FLAGS_overwrite)));
  // Samples are stored back to back, each followed by one filler token, so that
  // msa-train with
  // --seq_len=N reads exactly one sample per window (windows advance by N and
  // span N + 1).
  std::vector<uint32_t> tokens;
  tokens.reserve(samples * c.seq_len + 1);
  for (int64_t i = 0; i < samples; ++i) {
    const msa::SyntheticSample s = msa::make_synthetic_sample(c, static_cast<uint64_t>(i));
    tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
    progress_bar((i + 1) * c.seq_len, samples * c.seq_len);
  }
  tokens.push_back(0);
  const std::string path = absl::StrFormat("%s/%s-00000.tok", dir, prefix);
  MSA_RETURN_IF_ERROR(msa::write_shard(path, tokens, msa::TokenWidth::kU16));
  std::printf("msa-data: %lld %s samples of %lld tokens in %s (vocab %lld)\n",
              static_cast<long long>(samples), msa::synthetic_task_name(c.task),
              static_cast<long long>(c.seq_len), path.c_str(),
              static_cast<long long>(msa::kSyntheticVocab));
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Writes token shards for msa-train.\n"
      "  msa-data text --input=a.txt,b.txt --output=DIR [--shard_tokens=N] [--overwrite]\n"
      "      byte-level tokens (byte b -> id b), EOS id 256 after each "
      "document (vocab 257)\n"
      "  msa-data synthetic --task=kv-recall|needle --seq_len=N --samples=N "
      "--output=DIR\n"
      "      long-context retrieval samples (docs/data.md); train on them "
      "with\n"
      "      msa-train --data='DIR/*.tok' --seq_len=N, or generate on the fly "
      "with\n"
      "      msa-train --data=synthetic:kv-recall");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() != 2) {
    std::fprintf(stderr, "msa-data: expected one command, 'text' or 'synthetic' (see --help)\n");
    return 1;
  }
  const std::string command = rest[1];
  absl::Status s;
  if (command == "text") {
    s = run_text();
  } else if (command == "synthetic") {
    s = run_synthetic();
  } else {
    std::fprintf(stderr, "msa-data: unknown command '%s' (expected 'text' or 'synthetic')\n",
                 command.c_str());
    return 1;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "msa-data: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
