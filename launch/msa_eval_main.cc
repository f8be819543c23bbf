// msa-eval: long-context quality of a checkpoint: retrieval accuracy by context length and depth
// of the facts, index recall and block recall per MSA layer, validation loss.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/status.h"
#include "launch/eval_report.h"
#include "launch/program_usage.h"
#include "model/transformer.h"
#include "train/batch_source.h"
#include "train/checkpoint.h"
#include "train/evaluator.h"
#include "train/retrieval_eval.h"

ABSL_FLAG(std::string, checkpoint, "", "The checkpoint to evaluate (an msa-train HDF5 file).");
ABSL_FLAG(std::string, task, "kv-recall",
          "Retrieval task: 'kv-recall' or 'needle' (docs/data.md).");
ABSL_FLAG(std::string, lengths, "256,512,1024", "Comma-separated context lengths.");
ABSL_FLAG(std::string, depths, "0,0.25,0.5,0.75,1",
          "Comma-separated fractional depths of the facts.");
ABSL_FLAG(int, pairs, 4, "kv-recall: facts per sample.");
ABSL_FLAG(int64_t, samples, 64, "Samples per (length, depth) cell.");
ABSL_FLAG(int64_t, batch_size, 8, "Sequences per forward pass.");
ABSL_FLAG(std::string, attention_mode, "sparse",
          "'sparse' (MSA layers use their top-k selection) or 'dense' (MSA layers attend densely: "
          "the converted model's dense baseline).");
ABSL_FLAG(int64_t, recall_stride, 8,
          "Index recall and block recall sample every N-th query position (0: off). Measured on "
          "the selector's choice in either --attention_mode.");
ABSL_FLAG(std::string, data, "", "Optional token-shard glob: also report the validation loss.");
ABSL_FLAG(int64_t, seq_len, 1024, "With --data: validation sequence length.");
ABSL_FLAG(double, val_fraction, 0.01, "With --data: the held-out fraction (as in training).");
ABSL_FLAG(int, eval_batches, 8, "With --data: validation batches.");
ABSL_FLAG(uint64_t, seed, 20261123, "Seed of the evaluation samples (disjoint from training's).");
ABSL_FLAG(std::string, out_dir, "", "Write <out_dir>/<name>.csv and .md (empty: print only).");
ABSL_FLAG(std::string, name, "quality", "File stem of the report.");
ABSL_FLAG(std::string, device, "auto", "'cpu', 'cuda' or 'auto'.");
ABSL_FLAG(
    std::string, dump_logits_tokens, "",
    "Instead of the report: run one sequence of these comma-separated token ids and write its "
    "logits ([T, vocab] float32, little-endian) to --dump_logits (for comparisons with other "
    "frameworks, e.g. tests/convert/hf_reference_check.py).");
ABSL_FLAG(std::string, dump_logits, "logits.f32", "Output file of --dump_logits_tokens.");

namespace {

template <class T>
absl::StatusOr<std::vector<T>> parse_list(const std::string& flag, const std::string& text) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    T value;
    bool ok;
    if constexpr (std::is_same_v<T, double>) {
      ok = absl::SimpleAtod(part, &value);
    } else {
      ok = absl::SimpleAtoi(part, &value);
    }
    if (!ok)
      return absl::InvalidArgumentError(
          absl::StrFormat("invalid --%s: '%s' is not a number", flag, std::string(part)));
    out.push_back(value);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrFormat("invalid --%s: empty", flag));
  return out;
}

// Refuses a path that is a directory (a glob is expanded later; a plain directory would read as
// an empty or unreadable file and give an obscure error).
absl::Status refuse_directory(const char* flag, const std::string& path, const char* hint) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --%s: '%s' is a directory (%s)", flag, path, hint));
  return absl::OkStatus();
}

// Every count and fraction flag, checked before anything is loaded: each error names its flag.
absl::Status validate_flags(const std::vector<int64_t>& lengths,
                            const std::vector<double>& depths) {
  auto bad = [](const char* flag, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("invalid --%s: %s", flag, why));
  };
  constexpr int64_t kMaxTokens = std::numeric_limits<int32_t>::max();
  const int64_t samples = absl::GetFlag(FLAGS_samples);
  if (samples < 1 || samples > kMaxTokens)
    return bad("samples", absl::StrFormat("%d is outside [1, %d] (0 samples measure nothing)",
                                          samples, kMaxTokens));
  const int64_t batch = absl::GetFlag(FLAGS_batch_size);
  if (batch < 1 || batch > kMaxTokens)
    return bad("batch_size", absl::StrFormat("%d is outside [1, %d]", batch, kMaxTokens));
  if (absl::GetFlag(FLAGS_pairs) < 1)
    return bad("pairs", absl::StrFormat("%d is < 1", absl::GetFlag(FLAGS_pairs)));
  if (absl::GetFlag(FLAGS_recall_stride) < 0)
    return bad("recall_stride", absl::StrFormat("%d is < 0", absl::GetFlag(FLAGS_recall_stride)));
  for (int64_t length : lengths) {
    if (length < 1 || length > kMaxTokens)
      return bad("lengths", absl::StrFormat("%d is outside [1, %d]", length, kMaxTokens));
    if (std::min(batch, samples) > kMaxTokens / length)
      return bad("batch_size", absl::StrFormat("%d sequences of length %d exceed 2^31 tokens "
                                               "per forward pass",
                                               std::min(batch, samples), length));
  }
  for (double depth : depths)
    if (!std::isfinite(depth) || depth > 1)
      return bad("depths", absl::StrFormat("%g must be finite and <= 1 (< 0: random)", depth));
  if (!absl::GetFlag(FLAGS_data).empty()) {
    const int64_t seq_len = absl::GetFlag(FLAGS_seq_len);
    if (seq_len < 1 || seq_len > kMaxTokens)
      return bad("seq_len", absl::StrFormat("%d is outside [1, %d]", seq_len, kMaxTokens));
    if (batch > kMaxTokens / seq_len)
      return bad("batch_size", absl::StrFormat("%d sequences of --seq_len %d exceed 2^31 tokens",
                                               batch, seq_len));
    const double f = absl::GetFlag(FLAGS_val_fraction);
    if (!(f > 0 && f < 1)) return bad("val_fraction", absl::StrFormat("%g is outside (0, 1)", f));
    if (absl::GetFlag(FLAGS_eval_batches) < 1)
      return bad("eval_batches", absl::StrFormat("%d is < 1", absl::GetFlag(FLAGS_eval_batches)));
    MSA_RETURN_IF_ERROR(refuse_directory("data", absl::GetFlag(FLAGS_data),
                                         "give a glob of its shards, e.g. 'DIR/*.tok'"));
  }
  return absl::OkStatus();
}

absl::Status run() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) return absl::InvalidArgumentError("invalid --checkpoint: required");
  MSA_RETURN_IF_ERROR(
      refuse_directory("checkpoint", path, "give one checkpoint file, e.g. 'DIR/ckpt-*.h5'"));
  const bool dumping = !absl::GetFlag(FLAGS_dump_logits_tokens).empty();
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  if (!dumping) {
    MSA_ASSIGN_OR_RETURN(lengths, parse_list<int64_t>("lengths", absl::GetFlag(FLAGS_lengths)));
    MSA_ASSIGN_OR_RETURN(depths, parse_list<double>("depths", absl::GetFlag(FLAGS_depths)));
    MSA_RETURN_IF_ERROR(validate_flags(lengths, depths));
  }
  MSA_ASSIGN_OR_RETURN(msa::Checkpoint ckpt, msa::load_checkpoint(path, /*weights_only=*/true));
  const std::string device_flag = absl::GetFlag(FLAGS_device);
  msa::Device device = msa::Device::kCPU;
  if (device_flag == "cuda" || (device_flag == "auto" && msa::cuda_available())) {
    device = msa::Device::kCUDA;
  } else if (device_flag != "cpu" && device_flag != "auto") {
    return absl::InvalidArgumentError("invalid --device: use cpu, cuda or auto");
  }
  msa::Transformer model(
      ckpt.config, device == msa::Device::kCUDA ? msa::DType::kBF16 : msa::DType::kF32, device);
  for (msa::Parameter& p : model.params().all())
    p.value.copy_from(ckpt.params.at(p.spec.name).to(p.value.dtype()).to(device));

  const std::string mode_flag = absl::GetFlag(FLAGS_attention_mode);
  if (mode_flag != "sparse" && mode_flag != "dense")
    return absl::InvalidArgumentError("invalid --attention_mode: use sparse or dense");
  const msa::MsaMode mode =
      mode_flag == "sparse" ? msa::MsaMode::kSparse : msa::MsaMode::kDenseWarmup;

  const std::string dump_tokens = absl::GetFlag(FLAGS_dump_logits_tokens);
  if (!dump_tokens.empty()) {
    MSA_ASSIGN_OR_RETURN(std::vector<int64_t> ids,
                         parse_list<int64_t>("dump_logits_tokens", dump_tokens));
    const int64_t T = static_cast<int64_t>(ids.size());
    msa::Tensor tokens = msa::Tensor::empty({1, T}, msa::DType::kI32);
    msa::Tensor targets = msa::Tensor::empty({1, T}, msa::DType::kI32);
    for (int64_t t = 0; t < T; ++t) {
      if (ids[t] < 0 || ids[t] >= ckpt.config.vocab_size)
        return absl::InvalidArgumentError(
            absl::StrFormat("invalid --dump_logits_tokens: id %d outside the vocabulary", ids[t]));
      tokens.data<int32_t>()[t] = static_cast<int32_t>(ids[t]);
      targets.data<int32_t>()[t] = static_cast<int32_t>(ids[(t + 1) % T]);
    }
    msa::ForwardOptions options;
    options.msa_mode = mode;
    options.for_backward = false;
    model.forward(tokens.to(device), targets.to(device), options);
    msa::Tensor logits = model.logits().to(msa::Device::kCPU).to(msa::DType::kF32);
    const std::string out = absl::GetFlag(FLAGS_dump_logits);
    FILE* f = std::fopen(out.c_str(), "wb");
    if (f == nullptr)
      return absl::InvalidArgumentError("invalid --dump_logits: cannot write " + out);
    std::fwrite(logits.data<float>(), sizeof(float), logits.numel(), f);
    std::fclose(f);
    std::printf("msa-eval: wrote logits [%lld, %lld] to %s\n", static_cast<long long>(T),
                static_cast<long long>(ckpt.config.vocab_size), out.c_str());
    return absl::OkStatus();
  }

  msa::SyntheticConfig task;
  MSA_ASSIGN_OR_RETURN(task.task, msa::parse_synthetic_task(absl::GetFlag(FLAGS_task)));
  task.pairs = absl::GetFlag(FLAGS_pairs);
  task.seed = absl::GetFlag(FLAGS_seed);
  if (ckpt.config.vocab_size < msa::kSyntheticVocab)
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: vocab_size %d is too small for the synthetic tasks (ids up to %d)",
                        path, ckpt.config.vocab_size, msa::kSyntheticVocab - 1));

  msa::EvalReport report;
  report.title =
      absl::StrFormat("%s: %s, %s attention", path, msa::synthetic_task_name(task.task), mode_flag);
  report.lengths = lengths;
  report.depths = depths;
  for (int l = 0; l < ckpt.config.n_layers; ++l)
    if (ckpt.config.layer_kind(l) == msa::AttentionKind::kMsa) report.msa_layers.push_back(l);
  const int64_t recall_stride = absl::GetFlag(FLAGS_recall_stride);
  for (int64_t length : report.lengths) {
    for (double depth : report.depths) {
      task.seq_len = length;
      task.depth = depth;
      MSA_RETURN_IF_ERROR(msa::validate(task));
      const msa::RetrievalResult r =
          msa::evaluate_retrieval(model, task, absl::GetFlag(FLAGS_samples),
                                  absl::GetFlag(FLAGS_batch_size), mode, recall_stride);
      msa::EvalCell c{length, depth, r.accuracy, r.answers, r.index_recall, r.block_recall};
      c.index_recall.resize(report.msa_layers.size(), 0.0);
      c.block_recall.resize(report.msa_layers.size(), 0.0);
      report.cells.push_back(c);
      std::fprintf(stderr, "msa-eval: length %lld depth %.2f: accuracy %.1f%%\n",
                   static_cast<long long>(length), depth, 100 * r.accuracy);
    }
  }
  const std::string data = absl::GetFlag(FLAGS_data);
  if (!data.empty()) {
    MSA_ASSIGN_OR_RETURN(
        std::unique_ptr<msa::BatchSource> val,
        msa::make_shard_source(data, ckpt.config.vocab_size, absl::GetFlag(FLAGS_batch_size),
                               absl::GetFlag(FLAGS_seq_len), absl::GetFlag(FLAGS_val_fraction),
                               absl::GetFlag(FLAGS_seed), msa::DataLayout{}, /*validation=*/true));
    report.val_loss = msa::evaluate(model, *val, absl::GetFlag(FLAGS_eval_batches), mode).loss;
  }
  std::printf("%s", msa::format_report_table(report).c_str());
  const std::string out_dir = absl::GetFlag(FLAGS_out_dir);
  if (!out_dir.empty()) {
    MSA_RETURN_IF_ERROR(msa::write_report(report, out_dir, absl::GetFlag(FLAGS_name)));
    std::printf("msa-eval: wrote %s/%s.csv and .md\n", out_dir.c_str(),
                absl::GetFlag(FLAGS_name).c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Evaluates a checkpoint's long-context quality: retrieval accuracy by context length and\n"
      "depth, index recall (attention mass kept) and block recall (the paper's selector metric)\n"
      "per MSA layer, and (with --data) validation loss.\n"
      "  msa-eval --checkpoint=ckpt/ckpt-00000400.h5 --lengths=256,512,1024 --out_dir=report");
  absl::ParseCommandLine(argc, argv);
  const absl::Status s = run();
  if (!s.ok()) {
    std::fprintf(stderr, "msa-eval: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
