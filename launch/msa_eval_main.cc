// msa-eval: long-context quality of a checkpoint: retrieval accuracy by context length and depth
// of the facts, index recall, block recall, the index recall ceiling and the max-pool ceiling per
// MSA layer (over sampled queries; the first three also at the answer positions); or (--data) the
// validation loss and perplexity by position (in the window; in the document for checkpoints
// trained on packed documents), for one or several checkpoints side by side.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status.h"
#include "core/timer.h"
#include "data/synthetic.h"
#include "kernels/msa.h"
#include "launch/available_memory.h"
#include "launch/eval_perplexity.h"
#include "launch/eval_position_report.h"
#include "launch/eval_report.h"
#include "launch/png_plot.h"
#include "launch/program_usage.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "train/checkpoint.h"
#include "train/memory_estimate.h"
#include "train/retrieval_eval.h"

ABSL_FLAG(std::string, checkpoint, "",
          "The checkpoint to evaluate (an msa-train HDF5 file). With --data: a comma-separated "
          "list, compared side by side.");
ABSL_FLAG(std::string, labels, "",
          "With --data: comma-separated names of the checkpoints in the table, CSV and plot "
          "(default: their paths).");
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
          "the converted model's dense baseline). With --data: one mode for every checkpoint or "
          "a comma-separated mode per checkpoint (e.g. --checkpoint=a.h5,a.h5 "
          "--attention_mode=sparse,dense).");
ABSL_FLAG(int64_t, recall_stride, 8,
          "Index recall, block recall, the recall ceiling and the max-pool ceiling sample one "
          "query position in every N "
          "(0: off), at a phase that moves through the N by the golden ratio, so every offset "
          "within a block is sampled alike whatever N. Measured on the selector's choice in "
          "either --attention_mode. Raised for long sequences so that a measurement scores at "
          "most 2^28 (query, key) pairs per sequence and layer on the GPU (f32) or 2^22 on the "
          "CPU (f64).");
ABSL_FLAG(bool, answer_recall, true,
          "Also measure index recall, block recall and the recall ceiling at the answer positions "
          "only (the queries whose attention decides the task; --recall_stride's average is "
          "mostly filler tokens): the 'answer', 'ans.block' and 'ans.ceiling' columns per MSA "
          "layer.");
ABSL_FLAG(std::string, data, "",
          "Token shards (a glob or a comma-separated list of globs, as msa-data writes them): "
          "instead of the retrieval tasks, report the validation loss and perplexity by position "
          "in the window. Every window of the shards may be drawn: give held-out shards.");
ABSL_FLAG(int64_t, seq_len, 0,
          "With --data: window length (0: the first checkpoint's training --seq_len).");
ABSL_FLAG(std::optional<bool>, pack_documents, std::nullopt,
          "With --data: the windows' documents (separated by the shards' EOS id) attend and take "
          "positions on their own, as msa-train --pack_documents trains them (default: as the "
          "checkpoint was trained).");
ABSL_FLAG(int64_t, eval_windows, 16,
          "With --data: windows evaluated (one forward pass each), evenly spread over the shards.");
ABSL_FLAG(std::string, position_buckets, "",
          "With --data: comma-separated starts of the position buckets, from 0, increasing, below "
          "--seq_len (default: 0 and doubling from 1024, e.g. 0,1024,2048,4096,...).");
ABSL_FLAG(std::string, csv, "", "With --data: also write the table as CSV to this file.");
ABSL_FLAG(std::string, plot, "",
          "With --data: also draw loss against position (log2 axis) to this PNG file.");
ABSL_FLAG(std::string, plot_size, "800x500", "With --plot: WIDTHxHEIGHT in pixels.");
ABSL_FLAG(uint64_t, seed, 20261123,
          "Seed of the evaluation samples and of the --data windows (the default differs from "
          "msa-train's, so its samples are not the training run's; a training run with this very "
          "seed would have seen them).");
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

// Every count and fraction flag of the retrieval report, checked before anything is loaded: each
// error names its flag.
absl::Status validate_retrieval_flags(const std::vector<int64_t>& lengths,
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
  // A repeated row or column doubles the run for cells that cannot be told apart.
  for (size_t i = 0; i < lengths.size(); ++i)
    if (std::count(lengths.begin(), lengths.begin() + i, lengths[i]))
      return bad("lengths", absl::StrFormat("%d is listed twice", lengths[i]));
  for (size_t i = 0; i < depths.size(); ++i)
    if (depths[i] >= 0 && std::count(depths.begin(), depths.begin() + i, depths[i]))
      return bad("depths", absl::StrFormat("%g is listed twice", depths[i]));
  // The needle task plants one fact: --pairs (kv-recall's) was ignored.
  const absl::StatusOr<msa::SyntheticTask> task =
      msa::parse_synthetic_task(absl::GetFlag(FLAGS_task));
  if (task.ok() && *task == msa::SyntheticTask::kNeedle &&
      msa::flags_set({&absl::GetFlagReflectionHandle(FLAGS_pairs)}).size() == 1)
    return bad("pairs", "the needle task plants one fact; --pairs is kv-recall's");
  return absl::OkStatus();
}

// Every (length, depth) cell's task, checked before the checkpoint is loaded: an error names the
// flag (the task's own message says --seq_len, which msa-eval's retrieval report does not take).
absl::Status validate_tasks(const std::vector<int64_t>& lengths,
                            const std::vector<double>& depths) {
  msa::SyntheticConfig task;
  absl::StatusOr<msa::SyntheticTask> kind = msa::parse_synthetic_task(absl::GetFlag(FLAGS_task));
  if (!kind.ok())
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --task: %s", kind.status().message()));
  task.task = *kind;
  task.pairs = absl::GetFlag(FLAGS_pairs);
  task.seed = absl::GetFlag(FLAGS_seed);
  for (int64_t length : lengths)
    for (double depth : depths) {
      task.seq_len = length;
      task.depth = depth;
      if (absl::Status s = msa::validate(task); !s.ok()) {
        // The task names its length --seq_len, msa-train's flag.
        std::string why(s.message());
        if (const size_t colon = why.find(": ");
            absl::StartsWith(why, "invalid --seq_len=") && colon != std::string::npos)
          why = why.substr(colon + 2);
        return absl::InvalidArgumentError(absl::StrFormat(
            "invalid --lengths %d (--depths %g, --pairs %d): %s", length, depth, task.pairs, why));
      }
    }
  const int64_t stride = absl::GetFlag(FLAGS_recall_stride);
  for (int64_t length : lengths)
    if (stride > msa::max_recall_stride(length))
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --recall_stride: %d samples only position 0 of --lengths %d, whose attention "
          "any selection keeps (a recall of 1.0 that measures nothing): use at most %d; 0 turns "
          "the strided recalls off",
          stride, length, msa::max_recall_stride(length)));
  return absl::OkStatus();
}

// The flags of the other mode, given on the command line: refused instead of silently ignored
// (a --plot that never appears, a --csv path never checked).
absl::Status refuse_other_mode_flags(bool perplexity) {
  using absl::GetFlagReflectionHandle;
  const std::vector<const absl::CommandLineFlag*> retrieval_only = {
      &GetFlagReflectionHandle(FLAGS_lengths),
      &GetFlagReflectionHandle(FLAGS_depths),
      &GetFlagReflectionHandle(FLAGS_pairs),
      &GetFlagReflectionHandle(FLAGS_samples),
      &GetFlagReflectionHandle(FLAGS_batch_size),  // --data runs one window per pass
      &GetFlagReflectionHandle(FLAGS_task),
      &GetFlagReflectionHandle(FLAGS_recall_stride),
      &GetFlagReflectionHandle(FLAGS_answer_recall),
      &GetFlagReflectionHandle(FLAGS_dump_logits_tokens),
      &GetFlagReflectionHandle(FLAGS_dump_logits)};
  const std::vector<const absl::CommandLineFlag*> perplexity_only = {
      &GetFlagReflectionHandle(FLAGS_labels),
      &GetFlagReflectionHandle(FLAGS_seq_len),
      &GetFlagReflectionHandle(FLAGS_eval_windows),
      &GetFlagReflectionHandle(FLAGS_position_buckets),
      &GetFlagReflectionHandle(FLAGS_csv),
      &GetFlagReflectionHandle(FLAGS_plot),
      &GetFlagReflectionHandle(FLAGS_plot_size),
      &GetFlagReflectionHandle(FLAGS_pack_documents)};
  const std::vector<std::string> wrong =
      msa::flags_set(perplexity ? retrieval_only : perplexity_only);
  if (wrong.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid %s: %s to the %s report, and this run is the %s report",
                      absl::StrJoin(wrong, ", "), wrong.size() == 1 ? "it belongs" : "they belong",
                      perplexity ? "retrieval (without --data)" : "perplexity (with --data)",
                      perplexity ? "perplexity (with --data)" : "retrieval (without --data)"));
}

absl::StatusOr<msa::Device> choose_device() {
  const std::string flag = absl::GetFlag(FLAGS_device);
  if (flag == "cpu") return msa::Device::kCPU;
  if (flag == "auto") return msa::cuda_available() ? msa::Device::kCUDA : msa::Device::kCPU;
  if (flag == "cuda") {
    if (!msa::cuda_available())
      return absl::InvalidArgumentError(
          "invalid --device: cuda requested but no CUDA device is available in this build/machine");
    return msa::Device::kCUDA;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --device: '%s' (use cpu, cuda or auto)", flag));
}

absl::StatusOr<msa::MsaMode> parse_mode(absl::string_view mode) {
  if (mode == "sparse") return msa::MsaMode::kSparse;
  if (mode == "dense") return msa::MsaMode::kDenseWarmup;
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --attention_mode: '%s' (use sparse or dense)", std::string(mode)));
}

// Refuses a length whose forward pass cannot fit the device's free memory (a lower-bound estimate,
// train/memory_estimate.h), before the model is built: --lengths=2147483647 grew to 15 GB and on
// until the OOM killer.
absl::Status check_eval_memory(const msa::ModelConfig& config, msa::Device device, int64_t batch,
                               int64_t length, const char* flags) {
  msa::MemoryEstimateOptions m;
  m.model = config;
  m.batch_size = batch;
  m.seq_len = length;
  m.cuda = device == msa::Device::kCUDA;
  const msa::MemoryEstimate e = msa::estimate_inference_memory(m);
  const std::optional<double> free = m.cuda ? msa::cuda_free_bytes() : msa::host_available_bytes();
  if (!free || e.total() <= *free) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "not enough memory for %d sequence(s) of %d tokens (%s): the forward pass needs at least "
      "~%s, %s has %s free",
      batch, length, flags, msa::memory_string(e.total()),
      m.cuda ? "the GPU" : "this node's CPU memory (MemAvailable)", msa::memory_string(*free)));
}

// The checkpoint's weights in a model on `device` (bf16 on CUDA, f32 on the CPU).
std::unique_ptr<msa::Transformer> build_model(const msa::Checkpoint& ckpt, msa::Device device) {
  auto model = std::make_unique<msa::Transformer>(
      ckpt.config, device == msa::Device::kCUDA ? msa::DType::kBF16 : msa::DType::kF32, device);
  for (msa::Parameter& p : model->params().all())
    p.value.copy_from(ckpt.params.at(p.spec.name).to(p.value.dtype()).to(device));
  return model;
}

absl::Status run_dump_logits(msa::Transformer& model, msa::MsaMode mode) {
  MSA_ASSIGN_OR_RETURN(
      std::vector<int64_t> ids,
      parse_list<int64_t>("dump_logits_tokens", absl::GetFlag(FLAGS_dump_logits_tokens)));
  const int64_t T = static_cast<int64_t>(ids.size());
  const int64_t vocab = model.config().vocab_size;
  msa::Tensor tokens = msa::Tensor::empty({1, T}, msa::DType::kI32);
  msa::Tensor targets = msa::Tensor::empty({1, T}, msa::DType::kI32);
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab)
      return absl::InvalidArgumentError(
          absl::StrFormat("invalid --dump_logits_tokens: id %d outside the vocabulary", ids[t]));
    tokens.data<int32_t>()[t] = static_cast<int32_t>(ids[t]);
    targets.data<int32_t>()[t] = static_cast<int32_t>(ids[(t + 1) % T]);
  }
  msa::ForwardOptions options;
  options.msa_mode = mode;
  options.for_backward = false;
  model.forward(tokens.to(model.device()), targets.to(model.device()), options);
  msa::Tensor logits = model.logits().to(msa::Device::kCPU).to(msa::DType::kF32);
  const std::string out = absl::GetFlag(FLAGS_dump_logits);
  FILE* f = std::fopen(out.c_str(), "wb");
  if (f == nullptr) return absl::InvalidArgumentError("invalid --dump_logits: cannot write " + out);
  const bool written = std::fwrite(logits.data<float>(), sizeof(float), logits.numel(), f) ==
                       static_cast<size_t>(logits.numel());
  if (std::fclose(f) != 0 || !written)
    return absl::InternalError(absl::StrFormat("--dump_logits: writing '%s' failed", out));
  std::printf("msa-eval: wrote logits [%lld, %lld] to %s\n", static_cast<long long>(T),
              static_cast<long long>(vocab), out.c_str());
  return absl::OkStatus();
}

absl::Status run_retrieval(const std::string& path, const msa::Checkpoint& ckpt,
                           msa::Transformer& model, msa::MsaMode mode,
                           const std::vector<int64_t>& lengths, const std::vector<double>& depths) {
  msa::SyntheticConfig task;
  task.task = *msa::parse_synthetic_task(absl::GetFlag(FLAGS_task));  // validate_tasks read it
  task.pairs = absl::GetFlag(FLAGS_pairs);
  task.seed = absl::GetFlag(FLAGS_seed);
  if (ckpt.config.vocab_size < msa::kSyntheticVocab)
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: vocab_size %d is too small for the synthetic tasks (ids up to %d)",
                        path, ckpt.config.vocab_size, msa::kSyntheticVocab - 1));

  msa::EvalReport report;
  report.title = absl::StrFormat("%s: %s, %s attention", path, msa::synthetic_task_name(task.task),
                                 absl::GetFlag(FLAGS_attention_mode));
  report.lengths = lengths;
  report.depths = depths;
  for (int l = 0; l < ckpt.config.n_layers; ++l)
    if (ckpt.config.layer_kind(l) == msa::AttentionKind::kMsa) report.msa_layers.push_back(l);
  const int64_t recall_stride = absl::GetFlag(FLAGS_recall_stride);
  const bool answer_recall = absl::GetFlag(FLAGS_answer_recall);
  report.answer_recall = answer_recall && !report.msa_layers.empty();
  report.strided_recall = recall_stride > 0;  // 0: not measured
  for (int64_t length : report.lengths) {
    for (double depth : report.depths) {
      task.seq_len = length;
      task.depth = depth;
      const int64_t stride = msa::bounded_recall_stride(length, recall_stride, model.device());
      if (recall_stride > 0 && depth == report.depths.front() && stride != recall_stride)
        std::fprintf(stderr,
                     "msa-eval: at %lld tokens the recalls sample one query in every %lld "
                     "(--recall_stride=%lld, raised to bound their cost: T^2 / stride per "
                     "sequence and layer)\n",
                     static_cast<long long>(length), static_cast<long long>(stride),
                     static_cast<long long>(recall_stride));
      MSA_RETURN_IF_ERROR(msa::validate(task));
      const msa::RetrievalResult r = msa::evaluate_retrieval(
          model, task, absl::GetFlag(FLAGS_samples), absl::GetFlag(FLAGS_batch_size), mode,
          recall_stride, report.answer_recall);
      msa::EvalCell c;
      c.length = length;
      c.depth = depth;
      c.accuracy = r.accuracy;
      c.answers = r.answers;
      c.index_recall = r.index_recall;
      c.block_recall = r.block_recall;
      c.index_recall_ceiling = r.index_recall_ceiling;
      c.max_pool_recall_ceiling = r.max_pool_recall_ceiling;
      c.answer_index_recall = r.answer_index_recall;
      c.answer_block_recall = r.answer_block_recall;
      c.answer_index_recall_ceiling = r.answer_index_recall_ceiling;
      for (std::vector<double>* v :
           {&c.index_recall, &c.block_recall, &c.index_recall_ceiling, &c.max_pool_recall_ceiling,
            &c.answer_index_recall, &c.answer_block_recall, &c.answer_index_recall_ceiling})
        v->resize(report.msa_layers.size(), 0.0);
      report.cells.push_back(c);
      // The fact's block selected at the answers, per MSA layer: whether the selector finds what
      // the task needs (1.0 = always).
      std::string fact;
      for (size_t l = 0; l < r.answer_fact_selected.size(); ++l)
        fact += absl::StrFormat("%sL%d %.3f", fact.empty() ? "" : ", ",
                                l < report.msa_layers.size() ? report.msa_layers[l] : int(l),
                                r.answer_fact_selected[l]);
      std::fprintf(stderr, "msa-eval: length %lld depth %.2f: accuracy %.1f%%%s\n",
                   static_cast<long long>(length), depth, 100 * r.accuracy,
                   fact.empty() ? "" : (" | fact block selected " + fact).c_str());
    }
  }
  std::printf("%s", msa::format_report_table(report).c_str());
  std::fflush(stdout);  // before any file is written (an output may be a pipe beside it)
  const std::string out_dir = absl::GetFlag(FLAGS_out_dir);
  if (!out_dir.empty()) {
    MSA_RETURN_IF_ERROR(msa::write_report(report, out_dir, absl::GetFlag(FLAGS_name)));
    std::printf("msa-eval: wrote %s/%s.csv and .md\n", out_dir.c_str(),
                absl::GetFlag(FLAGS_name).c_str());
  }
  return absl::OkStatus();
}

// What --data needs beyond the checkpoints, checked before anything is loaded.
struct PerplexityPlan {
  std::vector<std::string> labels;
  std::vector<std::string> mode_names;  // per checkpoint
  int plot_width = 0, plot_height = 0;
};

absl::StatusOr<PerplexityPlan> plan_perplexity(const std::vector<std::string>& paths) {
  auto bad = [](const char* flag, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("invalid --%s: %s", flag, why));
  };
  const size_t n = paths.size();
  PerplexityPlan plan;
  const std::vector<std::string> labels =
      absl::StrSplit(absl::GetFlag(FLAGS_labels), ',', absl::SkipEmpty());
  plan.labels = labels.empty() ? paths : labels;
  if (plan.labels.size() != n)
    return bad("labels", absl::StrFormat("%d labels for %d checkpoints", plan.labels.size(), n));
  const std::vector<std::string> modes = absl::StrSplit(absl::GetFlag(FLAGS_attention_mode), ',');
  plan.mode_names = modes;
  if (plan.mode_names.size() == 1) plan.mode_names.resize(n, plan.mode_names[0]);
  if (plan.mode_names.size() != n)
    return bad("attention_mode",
               absl::StrFormat("%d modes for %d checkpoints (give one, or one per checkpoint)",
                               plan.mode_names.size(), n));
  for (const std::string& m : plan.mode_names) MSA_RETURN_IF_ERROR(parse_mode(m).status());
  // Default labels of one checkpoint evaluated in several modes must differ.
  const bool mixed_modes = std::count(plan.mode_names.begin(), plan.mode_names.end(),
                                      plan.mode_names[0]) != static_cast<std::ptrdiff_t>(n);
  if (labels.empty() && mixed_modes)
    for (size_t i = 0; i < n; ++i) plan.labels[i] = paths[i] + " " + plan.mode_names[i];
  // Two columns (and CSV rows) of one name could not be told apart.
  for (size_t i = 0; i < n; ++i)
    for (size_t k = 0; k < i; ++k)
      if (plan.labels[i] == plan.labels[k])
        return bad("labels", absl::StrFormat("'%s' names checkpoints %d and %d%s: give each its "
                                             "own label%s",
                                             plan.labels[i], k + 1, i + 1,
                                             labels.empty() ? " (their paths, the default)" : "",
                                             labels.empty() ? " with --labels" : ""));
  const int64_t seq_len = absl::GetFlag(FLAGS_seq_len);
  constexpr int64_t kMaxTokens = std::numeric_limits<int32_t>::max();
  if (seq_len < 0 || seq_len > kMaxTokens)
    return bad("seq_len",
               absl::StrFormat("%d is outside [0, %d] (0: the checkpoint's)", seq_len, kMaxTokens));
  if (absl::GetFlag(FLAGS_eval_windows) < 1)
    return bad("eval_windows", absl::StrFormat("%d is < 1", absl::GetFlag(FLAGS_eval_windows)));
  // The starts' syntax and order now; whether they lie below --seq_len once it is known.
  MSA_RETURN_IF_ERROR(
      msa::parse_position_buckets(absl::GetFlag(FLAGS_position_buckets), kMaxTokens + 1).status());
  const std::string size = absl::GetFlag(FLAGS_plot_size);
  const std::vector<std::string> wh = absl::StrSplit(size, 'x');
  if (wh.size() != 2 || !absl::SimpleAtoi(wh[0], &plan.plot_width) ||
      !absl::SimpleAtoi(wh[1], &plan.plot_height) || plan.plot_width < 200 ||
      plan.plot_height < 150 || plan.plot_width > 10000 || plan.plot_height > 10000)
    return bad("plot_size",
               absl::StrFormat("'%s' is not WIDTHxHEIGHT within 200x150..10000x10000", size));
  for (absl::string_view glob : absl::StrSplit(absl::GetFlag(FLAGS_data), ',', absl::SkipEmpty()))
    MSA_RETURN_IF_ERROR(
        refuse_directory("data", std::string(glob), "give a glob of its shards, e.g. 'DIR/*.tok'"));
  return plan;
}

// The training --seq_len recorded in a checkpoint's run options (msa-train writes it).
absl::StatusOr<int64_t> training_seq_len(const std::string& path, const std::string& run_json) {
  const nlohmann::json run = nlohmann::json::parse(run_json, nullptr, false);
  if (run.is_object() && run.contains("seq_len") && run["seq_len"].is_number_integer())
    return run["seq_len"].get<int64_t>();
  return absl::InvalidArgumentError(absl::StrFormat(
      "invalid --seq_len: 0 takes the training --seq_len, which %s does not record; give "
      "--seq_len",
      path));
}

// Whether the run that wrote a checkpoint trained on packed documents (its run options).
bool trained_packed(const std::string& run_json) {
  const nlohmann::json run = nlohmann::json::parse(run_json, nullptr, false);
  return run.is_object() && run.contains("pack_documents") && run["pack_documents"].is_boolean() &&
         run["pack_documents"].get<bool>();
}

absl::Status run_perplexity(const std::vector<std::string>& paths) {
  MSA_ASSIGN_OR_RETURN(const PerplexityPlan plan, plan_perplexity(paths));
  MSA_ASSIGN_OR_RETURN(const msa::Device device, choose_device());
  const std::string data = absl::GetFlag(FLAGS_data);
  msa::PositionReport report;
  report.labels = plan.labels;
  // Everything that can refuse the run is settled from the checkpoints' headers before any
  // weights are read: the windows, each checkpoint's vocabulary, memory, attention mode and
  // documents (a packed second checkpoint failed after the first one's every window).
  std::vector<msa::CheckpointHeader> headers;
  for (const std::string& path : paths) {
    MSA_ASSIGN_OR_RETURN(msa::CheckpointHeader h, msa::read_checkpoint_header(path));
    headers.push_back(std::move(h));
  }
  report.seq_len = absl::GetFlag(FLAGS_seq_len);
  if (report.seq_len == 0) {
    MSA_ASSIGN_OR_RETURN(report.seq_len, training_seq_len(paths[0], headers[0].run_json));
  }
  MSA_ASSIGN_OR_RETURN(report.starts, msa::parse_position_buckets(
                                          absl::GetFlag(FLAGS_position_buckets), report.seq_len));
  MSA_ASSIGN_OR_RETURN(std::unique_ptr<msa::EvalShards> shards,
                       msa::EvalShards::open(data, report.seq_len, headers[0].config.vocab_size));
  MSA_ASSIGN_OR_RETURN(
      const std::vector<int64_t> windows,
      msa::select_eval_windows(shards->num_windows(), absl::GetFlag(FLAGS_eval_windows),
                               absl::GetFlag(FLAGS_seed)));
  report.title =
      absl::StrFormat("Loss by position: %d windows of %d tokens", windows.size(), report.seq_len);
  absl::FPrintF(stderr, "msa-eval: %d of the %d windows of %d tokens in '%s'\n", windows.size(),
                shards->num_windows(), report.seq_len, data);
  std::vector<msa::MsaMode> modes;
  // A model trained on packed documents is evaluated on them (its attention never crossed a
  // document boundary, its positions restarted at each); --pack_documents overrides.
  std::vector<std::optional<int32_t>> eos(paths.size());
  for (size_t m = 0; m < paths.size(); ++m) {
    const msa::ModelConfig& config = headers[m].config;
    if (m > 0) MSA_RETURN_IF_ERROR(shards->check_vocab(config.vocab_size, paths[m]));
    MSA_ASSIGN_OR_RETURN(const msa::MsaMode mode, parse_mode(plan.mode_names[m]));
    modes.push_back(mode);
    MSA_RETURN_IF_ERROR(check_eval_memory(config, device, 1, report.seq_len, "--seq_len"));
    const std::optional<bool> flag = absl::GetFlag(FLAGS_pack_documents);
    if (!flag.value_or(trained_packed(headers[m].run_json))) continue;
    absl::StatusOr<int32_t> id = shards->eos_id(config.vocab_size);
    if (!id.ok() && !flag)
      return msa::annotate(id.status(),
                           absl::StrFormat("%s was trained with --pack_documents, so its windows' "
                                           "documents are needed (or give --pack_documents=false)",
                                           paths[m]));
    if (!id.ok()) return id.status();
    eos[m] = *id;
    absl::FPrintF(stderr,
                  "msa-eval: %s: packed documents (EOS id %d)%s; positions count from each "
                  "document's start\n",
                  plan.labels[m], *id, flag ? "" : ", as the checkpoint was trained");
  }
  headers.clear();
  for (size_t m = 0; m < paths.size(); ++m) {
    // One checkpoint in memory at a time.
    MSA_ASSIGN_OR_RETURN(msa::Checkpoint ckpt,
                         msa::load_checkpoint(paths[m], /*weights_only=*/true));
    const msa::MsaMode mode = modes[m];
    std::unique_ptr<msa::Transformer> model = build_model(ckpt, device);
    ckpt.params.clear();
    msa::Timer timer;
    report.losses.push_back(msa::evaluate_loss_by_position(
        *model, *shards, windows, report.starts, mode,
        [&](size_t i, int64_t w, double loss) {
          absl::FPrintF(stderr, "msa-eval: %s: window %d/%d (%s): loss %.4f, %.1f s\n",
                        plan.labels[m], i + 1, windows.size(), shards->describe_window(w), loss,
                        timer.seconds());
          timer.reset();
        },
        eos[m]));
  }
  const std::string markdown = msa::format_position_markdown(report);
  std::printf("%s", markdown.c_str());
  std::fflush(stdout);  // before any file is written (an output may be a pipe beside it)
  const std::string csv = msa::format_position_csv(report);
  if (!absl::GetFlag(FLAGS_csv).empty())
    MSA_RETURN_IF_ERROR(msa::write_text_file(absl::GetFlag(FLAGS_csv), csv, "csv"));
  if (!absl::GetFlag(FLAGS_plot).empty()) {
    const msa::Raster png =
        msa::render_line_plot(msa::position_loss_plot(report), plan.plot_width, plan.plot_height);
    const absl::Status s = msa::write_png(png, absl::GetFlag(FLAGS_plot));
    if (!s.ok()) return msa::annotate(s, "invalid --plot");
  }
  const std::string out_dir = absl::GetFlag(FLAGS_out_dir);
  if (!out_dir.empty()) {
    if (::mkdir(out_dir.c_str(), 0755) != 0 && errno != EEXIST)
      return absl::InvalidArgumentError(
          absl::StrFormat("invalid --out_dir: cannot create '%s'", out_dir));
    const std::string stem =
        (std::filesystem::path(out_dir) / absl::GetFlag(FLAGS_name)).lexically_normal().string();
    MSA_RETURN_IF_ERROR(msa::write_text_file(stem + ".md", markdown, "out_dir"));
    MSA_RETURN_IF_ERROR(msa::write_text_file(stem + ".csv", csv, "out_dir"));
    std::printf("msa-eval: wrote %s.csv and .md\n", stem.c_str());
  }
  return absl::OkStatus();
}

// The dump runs one sequence and writes nothing else: the report's flags given beside it were
// silently ignored (--lengths, --out_dir never created).
absl::Status refuse_report_flags_when_dumping() {
  using absl::GetFlagReflectionHandle;
  const std::vector<std::string> wrong = msa::flags_set(
      {&GetFlagReflectionHandle(FLAGS_lengths), &GetFlagReflectionHandle(FLAGS_depths),
       &GetFlagReflectionHandle(FLAGS_pairs), &GetFlagReflectionHandle(FLAGS_samples),
       &GetFlagReflectionHandle(FLAGS_task), &GetFlagReflectionHandle(FLAGS_batch_size),
       &GetFlagReflectionHandle(FLAGS_recall_stride), &GetFlagReflectionHandle(FLAGS_answer_recall),
       &GetFlagReflectionHandle(FLAGS_out_dir), &GetFlagReflectionHandle(FLAGS_name),
       &GetFlagReflectionHandle(FLAGS_seed)});
  if (wrong.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "invalid %s: %s to the retrieval report, and --dump_logits_tokens writes only the logits",
      absl::StrJoin(wrong, ", "), wrong.size() == 1 ? "it belongs" : "they belong"));
}

// The files this run will write, checked before any evaluation (a bad path failed after all of
// it): each writable where it is (or, new, in a writable directory that exists), none a
// directory, no two the same file (--csv=x --plot=x left only the PNG). --out_dir is created by
// the run: it must be a writable directory or new in one.
absl::Status check_output_paths(bool perplexity, bool dumping) {
  namespace fs = std::filesystem;
  // "r/" and "./r" are the directory "r"; comparisons are of absolute, resolved paths.
  auto plain = [](const std::string& text) {
    fs::path p = fs::path(text).lexically_normal();
    if (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
    return p;
  };
  auto resolved = [&](const std::string& text) {
    std::error_code ec;
    const fs::path p = fs::weakly_canonical(fs::absolute(plain(text)), ec);
    return ec ? fs::absolute(plain(text)).lexically_normal() : p;
  };
  // Writable in place, or creatable: "" when fine, else why not.
  auto unwritable = [&](const fs::path& p, bool directory) -> std::string {
    std::error_code ec;
    if (fs::exists(p, ec)) {
      if (fs::is_directory(p, ec) != directory)
        return directory ? "is not a directory" : "is a directory";
      return ::access(p.c_str(), W_OK) == 0 ? "" : "is not writable";
    }
    const fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
    if (!fs::exists(parent, ec))
      return absl::StrFormat("cannot be created: '%s' does not exist", parent.string());
    if (!fs::is_directory(parent, ec))
      return absl::StrFormat("cannot be created: '%s' is not a directory", parent.string());
    return ::access(parent.c_str(), W_OK) == 0
               ? ""
               : absl::StrFormat("cannot be created: '%s' is not writable", parent.string());
  };
  // The files: the flags' own, then --out_dir's report (flag "out_dir").
  std::vector<std::pair<std::string, std::string>> files;
  const std::string out_dir = absl::GetFlag(FLAGS_out_dir), name = absl::GetFlag(FLAGS_name);
  // --name is the stem of --out_dir's files: without it nothing was written, without a word.
  if (out_dir.empty() && msa::flags_set({&absl::GetFlagReflectionHandle(FLAGS_name)}).size() == 1)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --name: '%s' names the report files written into --out_dir, which is not given",
        name));
  if (dumping) {
    files.push_back({"dump_logits", absl::GetFlag(FLAGS_dump_logits)});
  } else {
    if (perplexity && !absl::GetFlag(FLAGS_csv).empty())
      files.push_back({"csv", absl::GetFlag(FLAGS_csv)});
    if (perplexity && !absl::GetFlag(FLAGS_plot).empty())
      files.push_back({"plot", absl::GetFlag(FLAGS_plot)});
    if (!out_dir.empty()) {
      if (name.empty() || name.find('/') != std::string::npos)
        return absl::InvalidArgumentError(absl::StrFormat(
            "invalid --name: '%s' (a file stem inside --out_dir, without '/')", name));
      if (const std::string why = unwritable(plain(out_dir), true); !why.empty())
        return absl::InvalidArgumentError(
            absl::StrFormat("invalid --out_dir: '%s' %s", out_dir, why));
      for (const auto& [flag, path] : files)
        if (resolved(path) == resolved(out_dir))
          return absl::InvalidArgumentError(
              absl::StrFormat("invalid --%s: '%s' is --out_dir itself", flag, path));
      const std::string stem = (plain(out_dir) / name).string();
      files.push_back({"out_dir", stem + ".csv"});
      files.push_back({"out_dir", stem + ".md"});
    }
  }
  for (size_t i = 0; i < files.size(); ++i) {
    const auto& [flag, path] = files[i];
    // A file named with a trailing slash names a directory (it failed after the evaluation).
    if (!fs::path(path).has_filename())
      return absl::InvalidArgumentError(
          absl::StrFormat("invalid --%s: '%s' names a directory, not a file", flag, path));
    std::error_code ec;
    for (size_t k = 0; k < i && !fs::is_character_file(resolved(path), ec); ++k)
      if (resolved(files[k].second) == resolved(path))
        return absl::InvalidArgumentError(
            absl::StrFormat("invalid --%s: '%s' is also --%s's file (one would replace the other)",
                            flag, path, files[k].first));
    // --out_dir's files are checked where the directory exists already (else it is new).
    if (flag == "out_dir" && !fs::is_directory(plain(out_dir))) continue;
    if (const std::string why = unwritable(plain(path), false); !why.empty())
      return absl::InvalidArgumentError(absl::StrFormat("invalid --%s: '%s' %s", flag, path, why));
    // This run's stdout as an output file: opening it for writing truncates what the report
    // printed there (and the two interleave).
    struct stat out, target;
    if (::fstat(STDOUT_FILENO, &out) == 0 && S_ISREG(out.st_mode) &&
        ::stat(path.c_str(), &target) == 0 && out.st_dev == target.st_dev &&
        out.st_ino == target.st_ino)
      return absl::InvalidArgumentError(
          absl::StrFormat("invalid --%s: '%s' is this run's standard output", flag, path));
  }
  return absl::OkStatus();
}

absl::Status run() {
  const std::string checkpoint_flag = absl::GetFlag(FLAGS_checkpoint);
  const std::vector<std::string> paths = absl::StrSplit(checkpoint_flag, ',', absl::SkipEmpty());
  if (paths.empty()) return absl::InvalidArgumentError("invalid --checkpoint: required");
  for (const std::string& path : paths) {
    // The hint names a file of the directory: a glob is no checkpoint (--flag=pattern is not
    // expanded by the shell, and the file name was then "not found").
    const std::vector<int64_t> steps = msa::list_checkpoint_steps(path);
    const std::string hint =
        steps.empty() ? std::string("give one checkpoint file, e.g. 'DIR/ckpt-00000600.h5'")
                      : absl::StrFormat("give one checkpoint file, e.g. the newest: '%s'",
                                        msa::checkpoint_path(path, steps.front()));
    MSA_RETURN_IF_ERROR(refuse_directory("checkpoint", path, hint.c_str()));
  }
  MSA_RETURN_IF_ERROR(refuse_other_mode_flags(!absl::GetFlag(FLAGS_data).empty()));
  const bool dumping_logits = !absl::GetFlag(FLAGS_dump_logits_tokens).empty();
  if (dumping_logits) MSA_RETURN_IF_ERROR(refuse_report_flags_when_dumping());
  MSA_RETURN_IF_ERROR(check_output_paths(!absl::GetFlag(FLAGS_data).empty(), dumping_logits));
  if (!absl::GetFlag(FLAGS_data).empty()) return run_perplexity(paths);
  if (paths.size() > 1)
    return absl::InvalidArgumentError(
        "invalid --checkpoint: several checkpoints are compared with --data (loss by position); "
        "run the retrieval report once per checkpoint");

  const std::string& path = paths[0];
  const bool dumping = !absl::GetFlag(FLAGS_dump_logits_tokens).empty();
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  if (!dumping) {
    MSA_ASSIGN_OR_RETURN(lengths, parse_list<int64_t>("lengths", absl::GetFlag(FLAGS_lengths)));
    MSA_ASSIGN_OR_RETURN(depths, parse_list<double>("depths", absl::GetFlag(FLAGS_depths)));
    MSA_RETURN_IF_ERROR(validate_retrieval_flags(lengths, depths));
  }
  MSA_ASSIGN_OR_RETURN(const msa::MsaMode mode, parse_mode(absl::GetFlag(FLAGS_attention_mode)));
  MSA_ASSIGN_OR_RETURN(const msa::Device device, choose_device());
  if (!dumping) MSA_RETURN_IF_ERROR(validate_tasks(lengths, depths));
  MSA_ASSIGN_OR_RETURN(msa::Checkpoint ckpt, msa::load_checkpoint(path, /*weights_only=*/true));
  if (!dumping)
    MSA_RETURN_IF_ERROR(
        check_eval_memory(ckpt.config, device,
                          std::min(absl::GetFlag(FLAGS_batch_size), absl::GetFlag(FLAGS_samples)),
                          *std::max_element(lengths.begin(), lengths.end()),
                          "--batch_size x the longest of --lengths"));
  std::unique_ptr<msa::Transformer> model = build_model(ckpt, device);
  if (dumping) return run_dump_logits(*model, mode);
  return run_retrieval(path, ckpt, *model, mode, lengths, depths);
}

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Evaluates a checkpoint's long-context quality: retrieval accuracy by context length and\n"
      "depth, index recall (attention mass kept), block recall (the paper's selector metric) and\n"
      "the recall ceiling (the most any k blocks keep) per MSA layer, over one query in every\n"
      "--recall_stride and at the answer positions\n"
      "(--answer_recall); or, with --data, the validation loss and perplexity by position in\n"
      "the window for one or several checkpoints side by side (docs/quality.md).\n"
      "  msa-eval --checkpoint=ckpt/ckpt-00000400.h5 --lengths=256,512,1024 --out_dir=report\n"
      "  msa-eval --checkpoint=dense.h5,msa.h5 --labels=dense,msa --data='val/*.tok' \\\n"
      "      --seq_len=8192 --eval_windows=8 --csv=ppl.csv --plot=ppl.png");
  if (msa::has_stray_arguments(absl::ParseCommandLine(argc, argv), 1, "msa-eval")) return 1;
  const absl::Status s = run();
  if (!s.ok()) {
    std::fprintf(stderr, "msa-eval: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
