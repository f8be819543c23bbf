#include "launch/train_program.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/communicator.h"
#include "core/cuda_device.h"
#include "core/deterministic.h"
#include "core/number_text.h"
#include "core/status.h"
#include "data/synthetic.h"
#include "kernels/msa.h"
#include "launch/available_memory.h"
#include "launch/hf_convert.h"
#include "launch/hf_rope_config.h"
#include "model/context_parallel.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "train/batch_source.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir_lock.h"
#include "train/evaluator.h"
#include "train/memory_estimate.h"
#include "train/stop_signal.h"

namespace msa {
namespace {

absl::StatusOr<Device> choose_device(const std::string& flag) {
  if (flag == "cpu") return Device::kCPU;
  if (flag == "cuda") {
    if (!cuda_available())
      return absl::InvalidArgumentError(
          "invalid --device: cuda requested but no CUDA device is available in this build/machine");
    return Device::kCUDA;
  }
  if (flag == "auto") return cuda_available() ? Device::kCUDA : Device::kCPU;
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --device: '%s' (use cpu, cuda or auto)", flag));
}

absl::Status validate_run(const TrainProgramOptions& o) {
  auto bad = [](const char* flag, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("invalid --%s: %s", flag, why));
  };
  if (o.batch_size < 1) return bad("batch_size", absl::StrFormat("%d is < 1", o.batch_size));
  if (o.seq_len < 2) return bad("seq_len", absl::StrFormat("%d is < 2", o.seq_len));
  if (o.trainer.steps < 1) return bad("steps", absl::StrFormat("%d is < 1", o.trainer.steps));
  if (o.trainer.grad_accum < 1)
    return bad("grad_accum", absl::StrFormat("%d is < 1", o.trainer.grad_accum));
  // Hyperparameters that cannot be right (non-finite or out of range) are refused here, before a
  // run could turn them into NaN weights.
  auto finite = [](double x) { return std::isfinite(x); };
  if (!(finite(o.trainer.lr.max_lr) && o.trainer.lr.max_lr > 0))
    return bad("lr", absl::StrFormat("%g must be finite and > 0", o.trainer.lr.max_lr));
  if (!(finite(o.trainer.lr.min_lr) && o.trainer.lr.min_lr >= 0))
    return bad("min_lr", absl::StrFormat("%g must be finite and >= 0", o.trainer.lr.min_lr));
  if (o.trainer.lr.min_lr > o.trainer.lr.max_lr)  // the "decay" would raise the LR to it
    return bad("min_lr", absl::StrFormat("%g is above --lr=%g (the cosine decays from --lr to it)",
                                         o.trainer.lr.min_lr, o.trainer.lr.max_lr));
  if (o.trainer.lr.warmup_steps < 0)
    return bad("warmup_steps", absl::StrFormat("%d is < 0", o.trainer.lr.warmup_steps));
  if (!(o.optimizer.beta1 >= 0 && o.optimizer.beta1 < 1))
    return bad("beta1", absl::StrFormat("%g is not in [0, 1)", o.optimizer.beta1));
  if (!(o.optimizer.beta2 >= 0 && o.optimizer.beta2 < 1))
    return bad("beta2", absl::StrFormat("%g is not in [0, 1)", o.optimizer.beta2));
  if (!(finite(o.optimizer.eps) && o.optimizer.eps > 0))
    return bad("adam_eps", absl::StrFormat("%g must be finite and > 0", o.optimizer.eps));
  if (!(finite(o.optimizer.weight_decay) && o.optimizer.weight_decay >= 0))
    return bad("weight_decay",
               absl::StrFormat("%g must be finite and >= 0", o.optimizer.weight_decay));
  if (!(finite(o.optimizer.grad_clip) && o.optimizer.grad_clip >= 0))
    return bad("grad_clip", absl::StrFormat("%g must be finite and >= 0 (0: no clipping)",
                                            o.optimizer.grad_clip));
  if (!(finite(o.model.msa.index_loss_weight) && o.model.msa.index_loss_weight >= 0))
    return bad("msa_index_loss_weight",
               absl::StrFormat("%g must be finite and >= 0", o.model.msa.index_loss_weight));
  if (!(finite(o.model.rope_theta) && o.model.rope_theta > 0))
    return bad("rope_theta", absl::StrFormat("%g must be finite and > 0", o.model.rope_theta));
  if (!(finite(o.model.norm_eps) && o.model.norm_eps > 0))
    return bad("norm_eps", absl::StrFormat("%g must be finite and > 0", o.model.norm_eps));
  if (o.pack_documents && absl::StartsWith(o.data, "synthetic:"))
    return bad("pack_documents",
               absl::StrFormat("needs token shards written by msa-data (their metadata names the "
                               "EOS id that ends each document); --data=%s has no documents",
                               o.data));
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))
    return bad("val_fraction", absl::StrFormat("%g is not in [0, 1)", o.val_fraction));
  if (o.trainer.max_nonfinite_steps < 1)
    return bad("max_nonfinite_steps", absl::StrFormat("%d is < 1", o.trainer.max_nonfinite_steps));
  if (o.trainer.recall_every < 0)
    return bad("recall_every", absl::StrFormat("%d must be >= 0", o.trainer.recall_every));
  if (o.trainer.recall_every > 0 && o.trainer.recall_query_stride < 1)
    return bad("recall_stride", absl::StrFormat("%d is < 1", o.trainer.recall_query_stride));
  // The sample's first window is position 0; past max_recall_stride its second starts past the
  // sequence (a binary search: counting windows took minutes at a huge --seq_len).
  if (o.model.any_msa() && o.trainer.recall_every > 0 &&
      o.trainer.recall_every <= o.trainer.steps &&
      o.trainer.recall_query_stride > max_recall_stride(o.seq_len))
    return bad(
        "recall_stride",
        absl::StrFormat("%d samples only position 0 of a --seq_len=%d sequence, whose local "
                        "block holds every key (a recall of 1.0 that measures nothing); "
                        "use at most %d, or --recall_every=0",
                        o.trainer.recall_query_stride, o.seq_len, max_recall_stride(o.seq_len)));
  if (o.trainer.log_every < 1)
    return bad("log_every", absl::StrFormat("%d is < 1", o.trainer.log_every));
  if (o.trainer.index_warmup_steps < 0)
    return bad("index_warmup_steps", absl::StrFormat("%d is < 0", o.trainer.index_warmup_steps));
  if (o.trainer.index_warmup_steps > 0 && !o.model.any_msa())
    return bad("index_warmup_steps", "needs at least one MSA layer (--attention)");
  if (o.trainer.index_warmup_steps > o.trainer.steps)
    return bad("index_warmup_steps",
               absl::StrFormat("%d is past --steps=%d: the backbone would never train (frozen "
                               "while the index warms up; = --steps trains the index only)",
                               o.trainer.index_warmup_steps, o.trainer.steps));
  if (o.dense_attention_steps < -1)
    return bad("dense_attention_steps",
               absl::StrFormat("%d is < -1 (-1: use --dense_attention_fraction)",
                               o.dense_attention_steps));
  if (!(o.dense_attention_fraction >= 0 && o.dense_attention_fraction <= 1))
    return bad("dense_attention_fraction",
               absl::StrFormat("%g is not in [0, 1]", o.dense_attention_fraction));
  if (o.eval_every < 0) return bad("eval_every", absl::StrFormat("%d must be >= 0", o.eval_every));
  if (o.eval_every > 0 && o.data == "synthetic:repeat")
    return bad("eval_every",
               "--data=synthetic:repeat has no validation data (it repeats one training batch: "
               "its loss is the training loss); give another --data, or --eval_every=0");
  if (o.eval_batches < 1 || o.eval_batches > std::numeric_limits<int>::max())
    return bad("eval_batches", absl::StrFormat("%d is not in [1, %d]", o.eval_batches,
                                               std::numeric_limits<int>::max()));
  if (o.checkpoint_every < 0)
    return bad("checkpoint_every", absl::StrFormat("%d must be >= 0", o.checkpoint_every));
  if (o.keep_last < 0) return bad("keep_last", absl::StrFormat("%d must be >= 0", o.keep_last));
  if (o.exit_after_step < 0)
    return bad("exit_after_step", absl::StrFormat("%d must be >= 0", o.exit_after_step));
  if ((o.resume || o.checkpoint_every > 0 || o.keep_last > 0 || o.exit_after_step > 0) &&
      o.checkpoint_dir.empty())
    return bad(o.resume                 ? "resume"
               : o.checkpoint_every > 0 ? "checkpoint_every"
               : o.exit_after_step > 0  ? "exit_after_step"
                                        : "keep_last",
               o.exit_after_step > 0 && !o.resume && o.checkpoint_every == 0 && o.keep_last == 0
                   ? "needs --checkpoint_dir (the checkpoint it writes is what --resume continues)"
                   : "needs --checkpoint_dir");
  if (o.resume && !o.init_from.empty())
    return bad("init_from", "cannot be combined with --resume (resume restores everything)");
  if (o.init_allow_missing_index && o.init_from.empty())
    return bad("init_allow_missing_index", "needs --init_from (the checkpoint it loads)");
  if (o.data == "synthetic:kv-recall" &&
      (o.synthetic_pairs < 1 || o.synthetic_pairs > kSyntheticKeys))
    return bad("synthetic_pairs",
               absl::StrFormat("%d is not in [1, %d]", o.synthetic_pairs, kSyntheticKeys));
  if (!std::isfinite(o.synthetic_depth) || o.synthetic_depth > 1)
    return bad("synthetic_depth",
               absl::StrFormat("%g must be finite and <= 1 (< 0: random)", o.synthetic_depth));
  if (o.reseed && !o.resume)
    return bad("reseed", "only with --resume (a fresh run simply uses --seed)");
  if (o.new_data && !o.resume)
    return bad("new_data", "only with --resume (a fresh run simply reads --data)");
  if (o.reseed && !o.explicit_seed) return bad("reseed", "needs the new --seed to continue with");
  if (o.bucket_mb < 1 || o.bucket_mb > (int64_t{1} << 40))
    return bad("bucket_mb", absl::StrFormat("%d is not in [1, 2^40]", o.bucket_mb));
  // Products of counts must not wrap: a micro-batch's tokens index tensors (int64).
  int64_t tokens = 0;
  if (__builtin_mul_overflow(o.batch_size, o.seq_len, &tokens) ||
      __builtin_mul_overflow(tokens, static_cast<int64_t>(o.trainer.grad_accum), &tokens))
    return bad("batch_size",
               absl::StrFormat("--batch_size x --seq_len x --grad_accum = %d x %d x %d overflows "
                               "a 64-bit count",
                               o.batch_size, o.seq_len, o.trainer.grad_accum));
  return absl::OkStatus();
}

// The run's totals must fit the 64-bit counters of the checkpoint (samples drawn, tokens seen):
// checked once the data-parallel size is known.
absl::Status validate_totals(const TrainProgramOptions& o, int dp_size) {
  int64_t samples_per_step = 0, samples = 0, tokens = 0;
  if (__builtin_mul_overflow(o.batch_size * o.trainer.grad_accum, static_cast<int64_t>(dp_size),
                             &samples_per_step) ||
      __builtin_mul_overflow(samples_per_step, o.trainer.steps, &samples) ||
      __builtin_mul_overflow(samples, o.seq_len, &tokens))
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --steps: %d steps of --batch_size %d x --grad_accum %d x %d data-parallel ranks "
        "sequences of --seq_len %d tokens overflow the 64-bit sample and token counts",
        o.trainer.steps, o.batch_size, o.trainer.grad_accum, dp_size, o.seq_len));
  return absl::OkStatus();
}

// Estimates this rank's memory before anything large is allocated, logs it (rank 0), and refuses
// a run that cannot fit (every rank checks its own device; all leave together).
absl::Status check_memory(const TrainProgramOptions& o, const ProcessGroups& groups,
                          Recompute recompute, Device device, int gpu) {
  MemoryEstimateOptions m;
  m.model = o.model;
  m.batch_size = o.batch_size;
  m.seq_len = o.seq_len / groups.cp_size;  // a cp rank's activations hold its shard
  m.cp = groups.cp_size;
  m.tp = groups.tp_size;
  m.dp = groups.dp_size * groups.cp_size;  // ZeRO-1 shards over dp x cp
  m.zero1 = o.zero1;
  m.cuda = device == Device::kCUDA;
  m.recompute = recompute;
  const MemoryEstimate estimate = estimate_training_memory(m);
  // Past this no tensor size is representable (int64 element counts): refused even unchecked.
  if (!(estimate.total() < 0x1p62))
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --batch_size / --seq_len / model sizes: the run would need ~%s per rank, "
        "beyond any addressable memory",
        memory_string(estimate.total())));
  std::optional<double> available;
  std::string where;
  int sharing = 1;
  if (device == Device::kCUDA) {
    available = cuda_free_bytes();
    where = absl::StrFormat("cuda:%d", gpu);
  } else {
    available = host_available_bytes();
    where = "this node's CPU memory (MemAvailable)";
    // The ranks of one node share its memory.
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &sharing);
    MPI_Comm_free(&node);
  }
  if (groups.world_rank == 0) {
    std::printf("msa-train: memory estimate per rank ~%s; %s: %s\n", estimate.describe().c_str(),
                where.c_str(),
                available ? absl::StrFormat("%s free", memory_string(*available)).c_str()
                          : "free memory unknown");
    std::fflush(stdout);
  }
  absl::Status status;
  if (o.memory_check && available)
    status = check_memory_fits(estimate, m, *available, sharing, where);
  const int64_t failed = groups.world->all_reduce_sum(static_cast<int64_t>(status.ok() ? 0 : 1));
  if (!status.ok()) {
    if (groups.world_rank != 0)  // rank 0 prints its own error; others would go unseen
      std::fprintf(stderr, "msa-train: rank %d: %s\n", groups.world_rank,
                   std::string(status.message()).c_str());
    return status;
  }
  if (failed > 0)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "not enough memory on %d rank(s) (their messages are above); try --recompute=full / a "
        "smaller --batch_size / a larger --tp, or --skip_memory_check",
        failed));
  return absl::OkStatus();
}

// The steps of the index warm-up with dense attention (see TrainProgramOptions).
// `count` when >= 0, else ceil(fraction * steps).
int64_t dense_attention_steps_of(int64_t count, double fraction, int64_t steps) {
  if (count >= 0) return count;
  return static_cast<int64_t>(std::ceil(fraction * static_cast<double>(steps) - 1e-9));
}

int64_t resolve_dense_attention_steps(const TrainProgramOptions& o) {
  if (!o.model.any_msa()) return 0;
  return dense_attention_steps_of(o.dense_attention_steps, o.dense_attention_fraction,
                                  o.trainer.steps);
}

// One line on what MSA layers do when: the warm-up phases, then sparse training.
std::string describe_phases(const TrainerConfig& t) {
  std::vector<std::string> parts;
  int64_t next = 1;
  auto phase = [&](int64_t n, const char* what) {
    // Not next + n - 1: a huge count overflowed.
    const int64_t last = n > t.steps - next ? t.steps : next + n - 1;
    if (n <= 0 || next > last) return;
    parts.push_back(absl::StrFormat("steps %d..%d %s", next, last, what));
    next = last + 1;
  };
  phase(t.index_warmup_steps, "index warm-up with the backbone frozen (dense attention)");
  phase(t.dense_attention_steps, "index warm-up (dense attention, everything trains)");
  phase(t.steps, "sparse attention");
  return absl::StrJoin(parts, ", ");
}

// Training (validation = false) or validation batches for --data.
// A resumed run passes its checkpoint's step and sample cursor (base_step, base_sample).
absl::StatusOr<std::unique_ptr<BatchSource>> make_source(const TrainProgramOptions& o,
                                                         const ProcessGroups& groups,
                                                         bool validation, int64_t base_step = 0,
                                                         int64_t base_sample = 0) {
  // Every cp rank of a data-parallel replica reads the replica's windows and keeps its shard.
  const DataLayout layout{o.trainer.grad_accum, groups.dp_rank, groups.dp_size, base_step,
                          base_sample};
  auto shard = [&](std::unique_ptr<BatchSource> s) {
    return make_context_shard_source(std::move(s), groups.cp_rank, groups.cp_size,
                                     o.cp_layout == "zigzag");
  };
  if (o.data == "synthetic:repeat") {
    // The same batch every step; its rows placed by the layout, as the other sources' are.
    return shard(
        make_repeating_source(o.model.vocab_size, o.batch_size, o.seq_len, 61, o.seed, layout));
  }
  if (absl::StartsWith(o.data, "synthetic:")) {
    auto source =
        make_synthetic_source(o.data.substr(10), o.model.vocab_size, o.batch_size, o.seq_len,
                              o.synthetic_pairs, o.synthetic_depth, o.seed, layout, validation);
    if (!source.ok()) return annotate(source.status(), "invalid --data");
    return shard(std::move(*source));
  }
  const std::string glob = absl::StartsWith(o.data, "shards:") ? o.data.substr(7) : o.data;
  auto source = make_shard_source(glob, o.model.vocab_size, o.batch_size, o.seq_len, o.val_fraction,
                                  o.seed, layout, validation, o.pack_documents);
  if (!source.ok()) return annotate(source.status(), "invalid --data");
  return shard(std::move(*source));
}

std::string run_json(const TrainProgramOptions& o) {
  nlohmann::json j;
  j["attention"] = o.attention_spec;
  j["data"] = o.data;
  j["batch_size"] = o.batch_size;
  j["seq_len"] = o.seq_len;
  j["pack_documents"] = o.pack_documents;
  j["val_fraction"] = o.val_fraction;
  j["synthetic_pairs"] = o.synthetic_pairs;
  j["synthetic_depth"] = o.synthetic_depth;
  j["seed"] = o.seed;
  j["steps"] = o.trainer.steps;
  j["grad_accum"] = o.trainer.grad_accum;
  j["index_warmup_steps"] = o.trainer.index_warmup_steps;
  j["dense_attention_steps"] = o.dense_attention_steps;
  j["dense_attention_fraction"] = o.dense_attention_fraction;
  j["lr"] = o.trainer.lr.max_lr;
  j["min_lr"] = o.trainer.lr.min_lr;
  j["warmup_steps"] = o.trainer.lr.warmup_steps;
  j["weight_decay"] = o.optimizer.weight_decay;
  j["beta1"] = o.optimizer.beta1;
  j["beta2"] = o.optimizer.beta2;
  j["adam_eps"] = o.optimizer.eps;
  j["grad_clip"] = o.optimizer.grad_clip;
  for (const auto& [key, value] : o.source_model) j[key] = value;
  if (o.started_from) j["started_from"] = *o.started_from;
  if (!o.data_identity.empty()) j["data_identity"] = o.data_identity;
  if (!o.data_metadata.empty()) j["data_metadata"] = o.data_metadata;
  return j.dump();
}

// --resume with flags that differ from those of the run that wrote the checkpoint (its /config
// run attribute; older files without one are not compared). Returns whether the data restarts.
// - The index warm-up keeps the checkpoint's length unless --dense_attention_steps or
//   --dense_attention_fraction changes it: raising --steps to continue a run (what a finished
//   run's message suggests) must not send its sparse steps back to dense attention.
// - Data flags: the checkpoint's sample cursor counts the old data's windows, so a change would
//   repeat and skip samples (and a new --val_fraction would move trained windows into the
//   validation split): refused unless --new_data, which starts the new data from its first sample.
// - Anything else (the schedule, the optimizer, the batch) is a deliberate change: printed.
absl::StatusOr<bool> reconcile_resumed_run(const std::string& stored, const std::string& path,
                                           int64_t step, bool leader, TrainProgramOptions& o) {
  const nlohmann::json was = nlohmann::json::parse(stored, nullptr, /*allow_exceptions=*/false);
  if (!was.is_object()) return false;
  auto number = [&](const char* key, double* out) {
    const auto it = was.find(key);
    if (it == was.end() || !it->is_number()) return false;
    *out = it->get<double>();
    return true;
  };
  double was_count = 0, was_fraction = 0, was_steps = 0;
  if (o.model.any_msa() && number("dense_attention_steps", &was_count) &&
      number("dense_attention_fraction", &was_fraction) && number("steps", &was_steps)) {
    const int64_t stored_warmup = dense_attention_steps_of(
        static_cast<int64_t>(was_count), was_fraction, static_cast<int64_t>(was_steps));
    const bool explicit_change =
        o.dense_attention_steps >= 0 || o.dense_attention_fraction != was_fraction;
    if (!explicit_change) {
      o.dense_attention_steps = stored_warmup;  // and so into this run's checkpoints
      o.trainer.dense_attention_steps = stored_warmup;
    } else if (o.trainer.dense_attention_steps != stored_warmup && leader) {
      std::printf(
          "msa-train: --resume: the index warm-up (dense attention) was %lld steps and is now "
          "%lld (--dense_attention_steps / --dense_attention_fraction)%s\n",
          static_cast<long long>(stored_warmup),
          static_cast<long long>(o.trainer.dense_attention_steps),
          last_dense_attention_step(o.trainer) > step
              ? absl::StrFormat(": steps %d..%d attend densely", step + 1,
                                last_dense_attention_step(o.trainer))
                    .c_str()
              : "");
    }
  }
  const nlohmann::json now = nlohmann::json::parse(run_json(o));
  auto shown = [](const nlohmann::json& v) {
    return v.is_string() ? v.get<std::string>() : v.dump();
  };
  // Data flags: --data, --seq_len and those the data in use reads (--val_fraction and
  // --pack_documents shards, --synthetic_* the generated tasks); the others' changes are printed
  // like the rest.
  const bool shards = !absl::StartsWith(o.data, "synthetic:");
  const bool generated = !shards && o.data != "synthetic:repeat";
  std::vector<std::string> data_changes, other_changes;
  for (const auto& [key, value] : now.items()) {
    const auto it = was.find(key);
    // The seed and the warm-up: checked above.
    // --synthetic_pairs: read by kv-recall only (a needle is one fact).
    if (key == "data_metadata" && it != was.end() && it->is_string() && value.is_string() &&
        same_data_metadata(it->get<std::string>(), value.get<std::string>()))
      continue;
    if (it == was.end() || *it == value || key == "seed" || key == "dense_attention_steps" ||
        key == "dense_attention_fraction" || key == "started_from" ||
        (key == "synthetic_pairs" && o.data != "synthetic:kv-recall"))
      continue;
    const bool data_flag = key == "data" || key == "seq_len" || key == "data_identity" ||
                           key == "data_metadata" ||
                           ((key == "val_fraction" || key == "pack_documents") && shards) ||
                           ((key == "synthetic_pairs" || key == "synthetic_depth") && generated);
    // data_identity / data_metadata are no flags: the shards under an unchanged --data changed.
    (data_flag ? data_changes : other_changes)
        .push_back(key == "data_identity" ? absl::StrFormat("the shards behind --data: %s -> %s",
                                                            shown(*it), shown(value))
                   : key == "data_metadata"
                       ? absl::StrFormat("msa-data's metadata beside the shards: hash %s -> %s",
                                         shown(*it), shown(value))
                       : absl::StrFormat("--%s %s -> %s", key, shown(*it), shown(value)));
  }
  const std::string changes = absl::StrJoin(data_changes, ", ");
  if (!data_changes.empty() && !o.new_data) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--resume: %s was written by a run on other data (%s). Its sample cursor counts that "
        "data's samples, so the run would not continue as it began (samples repeated or "
        "skipped%s). Pass the checkpoint's values to continue exactly, or add --new_data to "
        "train on the new data from its first sample from step %d on",
        path, changes,
        absl::StrContains(changes, "--val_fraction")
            ? ", and trained windows moved into the validation split"
            : "",
        step + 1));
  }
  if (leader && !data_changes.empty())
    std::printf("msa-train: --resume --new_data: %s; samples from the new data's first on\n",
                changes.c_str());
  if (leader && !other_changes.empty())
    std::printf("msa-train: --resume: flags changed from the checkpoint's run: %s\n",
                absl::StrJoin(other_changes, ", ").c_str());
  return !data_changes.empty();
}

// What must agree on every rank beyond the model and the schedule.
std::string layout_json(const TrainProgramOptions& o) {
  nlohmann::json j;
  j["tp"] = o.tp;
  j["cp"] = o.cp;
  j["cp_layout"] = o.cp_layout;
  j["zero1"] = o.zero1;
  j["bucket_mb"] = o.bucket_mb;
  j["device"] = o.device;
  j["recompute"] = o.recompute;
  j["deterministic"] = o.deterministic;
  j["checkpoint_dir"] = o.checkpoint_dir;
  j["checkpoint_every"] = o.checkpoint_every;
  j["resume"] = o.resume;
  j["auto_resume"] = o.auto_resume;
  j["init_from"] = o.init_from;
  j["exit_after_step"] = o.exit_after_step;
  j["max_nonfinite_steps"] = o.trainer.max_nonfinite_steps;
  j["eval_every"] = o.eval_every;
  j["synthetic_pairs"] = o.synthetic_pairs;
  j["synthetic_depth"] = o.synthetic_depth;
  // These decide collectives too (the recall and evaluation all-reduces) or checks that refuse on
  // some ranks only outside the setup's agreement: ranks given different values hung.
  j["recall_every"] = o.trainer.recall_every;
  j["recall_stride"] = o.trainer.recall_query_stride;
  j["eval_batches"] = o.eval_batches;
  j["new_data"] = o.new_data;
  j["reseed"] = o.reseed;
  j["explicit_seed"] = o.explicit_seed;
  j["init_allow_missing_index"] = o.init_allow_missing_index;
  j["memory_check"] = o.memory_check;
  j["log_every"] = o.trainer.log_every;  // validate_run refuses bad ones after the hash
  j["keep_last"] = o.keep_last;
  // The per-layer model JSON, unless the depth is past what validate() accepts (its list would take
  // minutes to build; validate() refuses it after the ranks agree).
  j["model"] = o.model.n_layers <= ModelConfig::kMaxLayers
                   ? nlohmann::json::parse(o.model.to_json())
                   : nlohmann::json(absl::StrFormat("n_layers %d", o.model.n_layers));
  return j.dump();
}

// Full (checkpoint) tensors -> this rank's parts, for the parameters of `params`.
std::map<std::string, Tensor> local_parts(const std::map<std::string, Tensor>& full,
                                          const ParameterSet& params, const TensorParallel& tp) {
  if (!tp.enabled() || full.empty()) return full;
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : full) {
    auto* p = const_cast<ParameterSet&>(params).find(name);
    out[name] = p ? tp_slice(t, p->spec.tp_split, tp.rank, tp.size) : t;
  }
  return out;
}

// This rank's parts -> full tensors (collective over tp: every rank calls it for the same names).
void gather_full(std::map<std::string, Tensor>& parts, const ParameterSet& params,
                 const TensorParallel& tp) {
  if (!tp.enabled()) return;
  for (auto& [name, t] : parts) t = tp_gather(t, params.at(name).spec.tp_split, tp.comm);
}

// The first field where two model configs differ, as "name: a vs b".
// The first difference between two JSON values as "path: <a> <a_where> vs <b> <b_where>" ("" when
// equal). Objects are compared member by member (the model's msa settings were one value, so a
// changed index loss weight was shown as the whole block), arrays element by element.
std::string json_difference(const nlohmann::json& a, const nlohmann::json& b,
                            const std::string& path, const char* a_where, const char* b_where) {
  auto at = [&](const std::string& key) { return path.empty() ? key : path + "." + key; };
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      const auto other = b.find(it.key());
      if (other == b.end())
        return absl::StrFormat("%s: %s %s vs absent %s", at(it.key()), it.value().dump(), a_where,
                               b_where);
      if (std::string d = json_difference(it.value(), *other, at(it.key()), a_where, b_where);
          !d.empty())
        return d;
    }
    for (auto it = b.begin(); it != b.end(); ++it)
      if (!a.contains(it.key()))
        return absl::StrFormat("%s: absent %s vs %s %s", at(it.key()), a_where, it.value().dump(),
                               b_where);
    return "";
  }
  if (a.is_array() && b.is_array() && a.size() == b.size()) {
    for (size_t i = 0; i < a.size(); ++i)
      if (std::string d =
              json_difference(a[i], b[i], absl::StrFormat("%s[%d]", path, i), a_where, b_where);
          !d.empty())
        return d;
    return "";
  }
  if (a == b) return "";
  return absl::StrFormat("%s: %s %s vs %s %s", path.empty() ? "(the whole value)" : path, a.dump(),
                         a_where, b.dump(), b_where);
}

std::string config_difference(const ModelConfig& a, const ModelConfig& b) {
  return json_difference(nlohmann::json::parse(a.to_json()), nlohmann::json::parse(b.to_json()), "",
                         "in the checkpoint", "from the flags");
}

// `s` of rank `root` on every rank.
std::string broadcast_string(Communicator& c, const std::string& s, int root) {
  const int64_t n = static_cast<int64_t>(c.broadcast(static_cast<uint64_t>(s.size()), root));
  Tensor t = Tensor::zeros({std::max<int64_t>(n, 1)}, DType::kI32);
  if (c.rank() == root)
    for (int64_t i = 0; i < n; ++i) t.data<int32_t>()[i] = static_cast<unsigned char>(s[i]);
  c.broadcast(t, root);
  std::string out(static_cast<size_t>(n), '\0');
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<char>(t.data<int32_t>()[i]);
  return out;
}

// A file already at the path a save is about to take is one that did not validate (a fresh run
// refuses a directory with checkpoints, and --resume continued from the newest valid one): it is
// renamed to <path>.invalid (or .invalid.N), never overwritten, so that it can still be looked at.
absl::Status move_aside_existing(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::OkStatus();
  std::string aside = path + ".invalid";
  for (int n = 1; ::stat(aside.c_str(), &st) == 0; ++n)
    aside = absl::StrFormat("%s.invalid.%d", path, n);
  if (std::rename(path.c_str(), aside.c_str()) != 0)
    return absl::InternalError(absl::StrFormat(
        "%s: cannot move the file that did not validate aside to %s before saving", path, aside));
  std::printf("msa-train: %s did not validate; kept as %s\n", path.c_str(), aside.c_str());
  return absl::OkStatus();
}

// Setup steps that read files each rank reads on its own (data shards, checkpoints, the metrics
// file, which only rank 0 opens) can fail on some ranks only: every rank learns whether any did
// before the next collective, so that none waits in one the others left (mpirun then hung). A rank
// whose failure rank 0 did not share prints its own message (rank 0 prints the error msa-train
// returns); the others return Aborted naming how many failed.
absl::Status agree_across_ranks(Communicator& world, int world_rank, absl::Status mine) {
  const int64_t failed = world.all_reduce_sum(static_cast<int64_t>(mine.ok() ? 0 : 1));
  if (failed == 0) return absl::OkStatus();
  const int64_t leader_failed =
      world.all_reduce_sum(static_cast<int64_t>(world_rank == 0 && !mine.ok() ? 1 : 0));
  if (!mine.ok()) {
    if (world_rank != 0 && leader_failed == 0) {
      std::fprintf(stderr, "msa-train (rank %d): %s\n", world_rank,
                   std::string(mine.message()).c_str());
      std::fflush(stderr);
    }
    return mine;
  }
  return absl::AbortedError(absl::StrFormat(
      "%d other rank(s) failed during setup (their messages above, prefixed with the rank)",
      failed));
}

absl::Status agree_across_ranks(const ProcessGroups& groups, absl::Status mine) {
  return agree_across_ranks(*groups.world, groups.world_rank, std::move(mine));
}

class CheckpointWriter {
 public:
  // base_step / base_sample: where this run's sample numbers start (a resumed run: its
  // checkpoint's step and cursor).
  CheckpointWriter(const TrainProgramOptions& o, const ModelConfig& config, AdamW& optimizer,
                   const Transformer& model, const ProcessGroups& groups, int64_t base_step,
                   int64_t base_sample)
      : o_(o),
        config_(config),
        optimizer_(optimizer),
        model_(model),
        groups_(groups),
        base_step_(base_step),
        base_sample_(base_sample) {}

  // Collective: the ranks that hold a part of the state rank 0 writes (checkpoints are unsharded)
  // gather it, rank 0 writes. `skipped`: the skipped steps up to `step` and those of them in the
  // frozen warm-up.
  absl::Status save(int64_t step, int64_t tokens_seen, int64_t nonfinite_in_a_row,
                    std::pair<int64_t, int64_t> skipped) {
    if (o_.checkpoint_dir.empty()) return absl::OkStatus();
    Checkpoint ckpt;
    ckpt.config = config_;
    ckpt.run_json = run_json(o_);
    // Without ZeRO-1 each rank's state is whole but for tp: only rank 0's tp group (dp 0, cp 0)
    // gathers it (every rank built a full host copy, 12 bytes per parameter, that only rank 0
    // wrote). With ZeRO-1 every rank holds a shard of it and takes part in the all-gather.
    const bool writers_tp_group = groups_.dp_rank == 0 && groups_.cp_rank == 0;
    if (optimizer_.config().zero1 || writers_tp_group) {
      ckpt.params = optimizer_.master_weights();
      ckpt.m = optimizer_.first_moments();
      ckpt.v = optimizer_.second_moments();
    }
    // Tensor parallelism: the tp ranks' parts make the full tensors (unsharded checkpoints); the
    // tp groups are independent, so only rank 0's gathers.
    if (writers_tp_group) {
      gather_full(ckpt.params, model_.params(), model_.tensor_parallel());
      gather_full(ckpt.m, model_.params(), model_.tensor_parallel());
      gather_full(ckpt.v, model_.params(), model_.tensor_parallel());
    }
    if (!writers_tp_group) ckpt = Checkpoint();  // the ZeRO-1 all-gathers' copies, not written
    ckpt.state.step = step;
    ckpt.state.tokens_seen = tokens_seen;
    ckpt.state.seed = static_cast<int64_t>(o_.seed);
    // Samples continue from the cursor this run started at (data/window_sampler.h).
    ckpt.state.sample_cursor =
        base_sample_ + (step - base_step_) * o_.trainer.grad_accum * o_.batch_size * groups_.dp_size;
    ckpt.state.lr_step = step;
    ckpt.state.nonfinite_in_a_row = nonfinite_in_a_row;
    ckpt.state.skipped_steps = skipped.first;
    ckpt.state.skipped_warmup_steps = skipped.second;
    const std::string path = checkpoint_path(o_.checkpoint_dir, step);
    absl::Status status;
    if (groups_.world_rank == 0) {
      status = move_aside_existing(path);
      if (status.ok()) status = save_checkpoint(path, ckpt);
      if (status.ok() && o_.keep_last > 0) {
        // Retention deletes only what the file just written (read back and validated)
        // supersedes: never anything newer, never the last valid checkpoint.
        auto check = load_checkpoint(path);
        if (!check.ok())
          status = absl::DataLossError(
              absl::StrFormat("the checkpoint just written does not validate, --keep_last "
                              "deletes nothing: %s",
                              check.status().message()));
        else
          valid_steps_.insert(step);
        if (status.ok())
          status = prune_checkpoints(
              o_.checkpoint_dir,
              static_cast<int>(std::min<int64_t>(o_.keep_last, std::numeric_limits<int>::max())),
              step, &valid_steps_);
      }
      if (status.ok()) {
        std::printf("msa-train: saved checkpoint %s\n", path.c_str());
        std::fflush(stdout);
      }
    }
    // Every rank learns whether the write succeeded (and none runs ahead of it).
    const int64_t failed = groups_.world->all_reduce_sum(static_cast<int64_t>(status.ok() ? 0 : 1));
    if (failed && status.ok())
      status = absl::InternalError(absl::StrFormat("%s: rank 0 failed to write it", path));
    if (status.ok()) last_saved_ = step;
    return status;
  }
  int64_t last_saved() const { return last_saved_; }
  // A checkpoint of this directory known to validate (the one resumed from).
  void mark_valid(int64_t step) {
    valid_steps_.insert(step);
    resumed_step_ = step;
  }
  // The newest checkpoint this run wrote or resumed from, for messages.
  std::string newest() const {
    const int64_t step = std::max(last_saved_, resumed_step_);
    if (o_.checkpoint_dir.empty()) return "none (no --checkpoint_dir was given)";
    if (step < 0) return "none written by this run";
    return absl::StrFormat("%s (step %d)", checkpoint_path(o_.checkpoint_dir, step), step);
  }

 private:
  const TrainProgramOptions& o_;
  const ModelConfig& config_;
  AdamW& optimizer_;
  const Transformer& model_;
  const ProcessGroups& groups_;
  const int64_t base_step_, base_sample_;
  int64_t last_saved_ = -1, resumed_step_ = -1;
  std::set<int64_t> valid_steps_;  // rank 0: steps of checkpoint_dir known to validate
};

absl::Status ensure_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --checkpoint_dir: cannot create '%s' (%s)", dir, ec.message()));
  return absl::OkStatus();
}

// Checks the checkpoint's weights (full tensors) against the model and returns this rank's parts
// of them as the optimizer's masters, which AdamW::load_state copies into the compute weights:
// the checkpoint's f32 values themselves (the masters used to be read back from the bf16 compute
// weights, so a GPU --init_from trained from weights rounded to 8 mantissa bits). Whole tensors
// are shared, not copied (the host holds the checkpoint already). A missing index branch
// (allow_missing_index) keeps its fresh initialization.
absl::StatusOr<std::map<std::string, Tensor>> checkpoint_masters(const Checkpoint& ckpt,
                                                                 const std::string& path,
                                                                 Transformer& model,
                                                                 bool allow_missing_index) {
  const TensorParallel& tp = model.tensor_parallel();
  std::map<std::string, Tensor> masters;
  for (Parameter& p : model.params().all()) {
    auto it = ckpt.params.find(p.spec.name);
    if (it == ckpt.params.end()) {
      if (p.spec.index_branch && allow_missing_index) {
        masters[p.spec.name] = p.value.to(DType::kF32).to(Device::kCPU);
        continue;
      }
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: has no parameter %s that the model needs", path, p.spec.name));
    }
    const Shape full = full_shape(p.value.shape(), p.spec.tp_split, tp.size);
    if (it->second.shape() != full)
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: parameter %s has shape %s, the model needs %s", path, p.spec.name,
                          shape_string(it->second.shape()), shape_string(full)));
    masters[p.spec.name] = tp.enabled() && p.spec.tp_split != TpSplit::kReplicated
                               ? tp_slice(it->second, p.spec.tp_split, tp.rank, tp.size)
                               : it->second;
  }
  // A tensor the model has no place for is a weight the flags would silently drop (a bias, a
  // norm, an untied LM head, an MSA layer's index branch under --attention=dense).
  for (const auto& [name, value] : ckpt.params)
    if (model.params().find(name) == nullptr)
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: holds parameter %s, which the model the flags build does not have (its weights "
          "would be dropped: give the flags of the checkpoint's model, --n_layers and --attention "
          "among them)",
          path, name));
  return masters;
}

// --init_from takes the weights; the sizes come from the flags and are checked by the shapes. The
// fields that change what the same weights compute (no shape tells them) must agree as well.
absl::Status check_init_architecture(const ModelConfig& stored, const ModelConfig& flags,
                                     const std::string& path) {
  std::vector<std::string> wrong;
  // The tensors' shapes pin n_heads x head_dim and n_kv_heads x head_dim only: (4, 2, 8) and
  // (8, 4, 4) load the same tensors into another attention (it trained on without a word).
  if (stored.n_heads != flags.n_heads)
    wrong.push_back(absl::StrFormat("--n_heads=%d (not %d)", stored.n_heads, flags.n_heads));
  if (stored.n_kv_heads != flags.n_kv_heads)
    wrong.push_back(
        absl::StrFormat("--n_kv_heads=%d (not %d)", stored.n_kv_heads, flags.n_kv_heads));
  if (stored.head_dim != flags.head_dim)
    wrong.push_back(absl::StrFormat("--head_dim=%d (not %d)", stored.head_dim, flags.head_dim));
  if (stored.norm_eps != flags.norm_eps)
    wrong.push_back(absl::StrFormat("--norm_eps=%s (not %s)", shortest_text(stored.norm_eps),
                                    shortest_text(flags.norm_eps)));
  auto flag_of = [](const char* name, bool on) {
    return absl::StrFormat("--%s%s", on ? "" : "no", name);
  };
  if (stored.qkv_bias != flags.qkv_bias) wrong.push_back(flag_of("qkv_bias", stored.qkv_bias));
  if (stored.qk_norm != flags.qk_norm) wrong.push_back(flag_of("qk_norm", stored.qk_norm));
  if (stored.tied_embeddings != flags.tied_embeddings)
    wrong.push_back(flag_of("tied_embeddings", stored.tied_embeddings));
  // The index branch's weights, where they are loaded, rotate (or not) as they were trained.
  if (stored.any_msa() && flags.any_msa() &&
      stored.msa.index_rotary_dim != flags.msa.index_rotary_dim)
    wrong.push_back(absl::StrFormat("--msa_index_rotary_dim=%d", stored.msa.index_rotary_dim));
  if (wrong.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "--init_from: %s was written for a model the flags do not build: pass %s (msa-convert prints "
      "the msa-train flags of the model it writes)",
      path, absl::StrJoin(wrong, " ")));
}

// RoPE belongs to the weights: a run that continues (--resume) or starts from (--init_from) a
// checkpoint takes the checkpoint's theta, scaling and rotary dimension (msa-train has flags only
// for theta: a converted Llama 3.1 carries llama3 scaling). An explicit --rope_theta that differs
// from the checkpoint's replaces its theta on --init_from (context extension) and is refused on
// --resume.
absl::Status adopt_checkpoint_rope(const ModelConfig& stored, const char* flag,
                                   const std::string& path, bool leader, TrainProgramOptions& o) {
  const bool resume = std::string(flag) == "--resume";
  if (o.explicit_rope_theta && o.model.rope_theta != stored.rope_theta) {
    // A new theta on --init_from is continued pretraining that extends the context (raising
    // theta is the usual recipe); on --resume it would change the model mid-run.
    if (resume)
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: %s was trained with RoPE %s, but --rope_theta=%g was given (leave it out to use "
          "the checkpoint's)",
          flag, path, describe_rope(stored.rope(), stored.head_dim), o.model.rope_theta));
    if (leader)
      std::printf("msa-train: --rope_theta=%g replaces the theta of %s (RoPE %s)\n",
                  o.model.rope_theta, path.c_str(),
                  describe_rope(stored.rope(), stored.head_dim).c_str());
    o.model.rope_scaling = stored.rope_scaling;
    o.model.rotary_dim = stored.rotary_dim;
    return absl::OkStatus();
  }
  if (o.model.rope_theta != stored.rope_theta || !stored.plain_rope()) {
    if (leader)
      std::printf("msa-train: RoPE from %s: %s\n", path.c_str(),
                  describe_rope(stored.rope(), stored.head_dim).c_str());
  }
  o.model.rope_theta = stored.rope_theta;
  o.model.rope_scaling = stored.rope_scaling;
  o.model.rotary_dim = stored.rotary_dim;
  return absl::OkStatus();
}

// The synthetic retrieval tasks (kv-recall, needle): their only counted targets are the answers,
// so the validation can measure the recalls at the answer positions.
bool is_retrieval_data(const std::string& data) {
  return absl::StartsWith(data, "synthetic:") && data != "synthetic:repeat";
}

// " | answer recall 0.912,0.870 | answer block recall 0.750,0.688 | answer recall ceiling
// 0.950,0.921": per MSA layer, or "".
std::string format_answer_recall(const EvalResult& r) {
  if (r.answer_index_recall.empty()) return "";
  auto per_layer = [](const std::vector<double>& v) {
    return absl::StrJoin(v, ",", [](std::string* out, double x) {
      absl::StrAppend(out, absl::StrFormat("%.3f", x));
    });
  };
  return " | answer recall " + per_layer(r.answer_index_recall) + " | answer block recall " +
         per_layer(r.answer_block_recall) + " | answer recall ceiling " +
         per_layer(r.answer_index_recall_ceiling);
}

// The --init_from recorded in a checkpoint's run flags ("" from scratch; nullopt when the file
// has no record: written before it was kept).
std::optional<std::string> started_from_of(const std::string& run_json) {
  const nlohmann::json run = nlohmann::json::parse(run_json, nullptr, false);
  const auto it = run.is_object() ? run.find("started_from") : run.end();
  if (!run.is_object() || it == run.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// `path` made absolute through links when it resolves (a relaunch from another directory names
// the same file), else as given.
std::string resolved_path(const std::string& path) {
  char r[PATH_MAX];
  return ::realpath(path.c_str(), r) != nullptr ? std::string(r) : path;
}

// --auto_resume -> --resume (and no --init_from: the run's checkpoints hold everything) when
// --checkpoint_dir holds checkpoints, else a fresh run. Rank 0 looks and decides for every rank
// (ranks that chose differently, or refused on their own, would meet different collectives: a
// directory not shared by every node); a rank that cannot then read the checkpoint fails
// --resume's own checks. With --init_from, the checkpoints must be of a run that started from it:
// another run's (a flagfile's --checkpoint_dir, the file itself inside the directory) would be
// continued instead of the new run the command asks for.
absl::Status resolve_auto_resume(Communicator& world, TrainProgramOptions& o) {
  // With --resume (a flagfile's --auto_resume, --resume on the command line): a checkpoint is
  // required.
  if (!o.auto_resume || o.resume) return absl::OkStatus();
  if (o.checkpoint_dir.empty())
    return absl::InvalidArgumentError(
        "invalid --auto_resume: needs --checkpoint_dir (where it looks for checkpoints)");
  const bool leader = world.rank() == 0;
  int64_t found = 0;  // checkpoints in the directory; -1: refused (rank 0 says why)
  std::string refusal;
  if (leader) {
    const std::vector<int64_t> steps = list_checkpoint_steps(o.checkpoint_dir);
    found = static_cast<int64_t>(steps.size());
    if (found > 0 && !o.init_from.empty()) {
      // The newest file whose header reads (--resume passes over files that do not validate);
      // one without the record (older) is taken as this run's.
      for (const int64_t step : steps) {
        const std::string path = checkpoint_path(o.checkpoint_dir, step);
        const absl::StatusOr<CheckpointHeader> header = read_checkpoint_header(path);
        if (!header.ok()) continue;
        const std::optional<std::string> started = started_from_of(header->run_json);
        if (started && *started != resolved_path(o.init_from)) {
          refusal = absl::StrFormat(
              "invalid --auto_resume: --checkpoint_dir=%s holds the checkpoints of a run that did "
              "not start from --init_from=%s (%s started %s): give the new run its own "
              "--checkpoint_dir (or, to continue that run, drop --init_from)",
              o.checkpoint_dir, o.init_from, path,
              started->empty() ? "from scratch" : absl::StrCat("from ", *started));
          found = -1;
        }
        break;
      }
    }
  }
  found = static_cast<int64_t>(world.broadcast(static_cast<uint64_t>(found), 0));
  if (found < 0)
    return absl::InvalidArgumentError(
        leader ? refusal : "invalid --auto_resume: refused on rank 0 (its message says why)");
  o.resume = found > 0;
  const bool init_given = !o.init_from.empty();
  if (o.resume) {
    o.auto_resume_init_from = o.init_from;
    o.init_from.clear();
    o.init_allow_missing_index = false;
  } else {
    // Nothing to resume: what they would change about the resumed run does not apply.
    o.reseed = false;
    o.new_data = false;
  }
  if (!leader) return absl::OkStatus();
  if (o.resume) {
    std::printf(
        "msa-train: --auto_resume: %s holds %lld checkpoint(s): resuming from the newest "
        "valid one%s\n",
        o.checkpoint_dir.c_str(), static_cast<long long>(found),
        init_given ? " (the run started from --init_from, which is not read again)" : "");
  } else {
    std::printf("msa-train: --auto_resume: no checkpoint in %s: starting a fresh run%s\n",
                o.checkpoint_dir.c_str(),
                o.init_from.empty() ? "" : absl::StrCat(" from ", o.init_from).c_str());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int> int_flag_value(const char* flag, int64_t value) {
  if (value < std::numeric_limits<int>::min() || value > std::numeric_limits<int>::max())
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --%s: %d is out of range (this count is at most %d)", flag, value,
                        std::numeric_limits<int>::max()));
  return static_cast<int>(value);
}

absl::Status run_train_program(TrainProgramOptions o) {
  // MPI_COMM_WORLD for the checks before the process groups exist.
  const std::unique_ptr<Communicator> world = make_mpi_communicator(MPI_COMM_WORLD);
  {
    // Every rank must run the same model, schedule and layout: compare a hash of the options
    // before anything else, so no rank fails a check that the others pass.
    const std::string flags =
        absl::StrCat("{\"layout\":", layout_json(o), ",\"run\":", run_json(o), "}");
    const uint64_t config_hash = fnv1a64(flags);
    const bool differs = world->broadcast(config_hash, 0) != config_hash;
    if (world->all_reduce_sum(static_cast<int64_t>(differs)) != 0) {
      // Every rank names the first value in which the lowest differing rank's flags differ from
      // rank 0's (only rank 0 prints its error).
      Tensor mine = Tensor::from_vector<double>({1}, {differs ? 1.0 : 0.0});
      Tensor all = Tensor::empty({static_cast<int64_t>(world->size())}, DType::kF64);
      world->all_gather(mine, all);
      int first = 1, differing = 0;
      while (first < world->size() && all.data<double>()[first] == 0) ++first;
      for (int r = 1; r < world->size(); ++r) differing += all.data<double>()[r] != 0;
      const std::string leaders = broadcast_string(*world, flags, 0);
      const std::string theirs = broadcast_string(*world, flags, first);
      // (Empty when the texts differ but the values compare equal: -0 and 0.)
      const std::string which =
          json_difference(nlohmann::json::parse(leaders), nlohmann::json::parse(theirs), "",
                          "on rank 0", absl::StrFormat("on rank %d", first).c_str());
      return absl::InvalidArgumentError(absl::StrFormat(
          "the ranks were started with different model or training flags (config hash "
          "mismatch: %d of %d ranks differ from rank 0%s; start every rank with the same flags)",
          differing, world->size(), which.empty() ? "" : absl::StrCat("; ", which)));
    }
  }
  MSA_RETURN_IF_ERROR(resolve_auto_resume(*world, o));
  MSA_ASSIGN_OR_RETURN(o.model.attention,
                       parse_attention_kinds(o.attention_spec, o.model.n_layers));
  MSA_RETURN_IF_ERROR(o.model.validate());
  MSA_RETURN_IF_ERROR(validate_run(o));
  o.trainer.dense_attention_steps = resolve_dense_attention_steps(o);
  MSA_ASSIGN_OR_RETURN(const Recompute recompute, parse_recompute(o.recompute));
  MSA_RETURN_IF_ERROR(check_tensor_parallel(o.model, o.tp));
  if (o.cp_layout != "contiguous" && o.cp_layout != "zigzag")
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --cp_layout: '%s' (use contiguous or zigzag)", o.cp_layout));
  const bool zigzag = o.cp_layout == "zigzag";
  MSA_RETURN_IF_ERROR(check_context_parallel(o.model, o.cp, o.seq_len, zigzag));
  // The device can fail or differ on some ranks only (a node without a GPU or with fewer, or
  // --device=auto on mixed nodes): every rank learns it before the process groups, a collective
  // (the ranks that could go on waited in it for those that had left).
  Device device = Device::kCPU;
  int gpu = -1;
  {
    // Collective (a communicator split): on every rank, not only those that chose CUDA (a rank
    // without a GPU met it with its next all-reduce: MPI_ERR_TRUNCATE on a mixed H100 run).
    const int local_rank = node_local_rank();
    MSA_RETURN_IF_ERROR(agree_across_ranks(*world, world->rank(), [&]() -> absl::Status {
      MSA_ASSIGN_OR_RETURN(device, choose_device(o.device));
      if (device == Device::kCUDA) {
        MSA_ASSIGN_OR_RETURN(gpu, select_cuda_device(local_rank, o.gpu));
      }
      return absl::OkStatus();
    }()));
    const int64_t on_cuda = world->all_reduce_sum(int64_t{device == Device::kCUDA});
    if (on_cuda != 0 && on_cuda != world->size())
      return absl::FailedPreconditionError(absl::StrFormat(
          "--device=%s chose CUDA on %d of %d ranks (the others found no GPU): every rank must "
          "run on the same kind of device; pass --device=cuda or --device=cpu",
          o.device, on_cuda, world->size()));
  }
  // Process-wide: read by the kernels at each call (in-process tests restore it on return).
  const ScopedDeterministic deterministic_mode(o.deterministic);
  MSA_ASSIGN_OR_RETURN(
      ProcessGroups groups,
      make_process_groups(o.tp, o.cp, device == Device::kCUDA && world->size() > 1));
  MSA_RETURN_IF_ERROR(validate_totals(o, groups.dp_size));
  MSA_RETURN_IF_ERROR(check_memory(o, groups, recompute, device, gpu));
  std::unique_ptr<BatchSource> data, validation;
  MSA_RETURN_IF_ERROR(agree_across_ranks(groups, [&]() -> absl::Status {
    MSA_ASSIGN_OR_RETURN(data, make_source(o, groups, false));
    if (o.eval_every > 0) {
      MSA_ASSIGN_OR_RETURN(validation, make_source(o, groups, true));
    }
    return absl::OkStatus();
  }()));
  o.data_identity = data->data_identity();
  o.data_metadata = data->data_metadata();
  // Every rank must read the same data: nodes with their own copies of the shards can differ
  // (a copy half done, an older set), and each rank would draw its samples from its own.
  if (const uint64_t h = fnv1a64(o.data_identity);
      world->all_reduce_sum(static_cast<int64_t>(world->broadcast(h, 0) != h)) != 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --data: the ranks read different shards under '%s' (this rank: %s); give every "
        "node the same copy",
        o.data, o.data_identity));
  const bool leader = groups.world_rank == 0;
  if (!leader) o.trainer.quiet = true;
  if (validation && validation->distinct_batches() == 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --eval_every: the validation split of --data=%s holds fewer windows than one "
        "global batch of %lld (--batch_size x data-parallel ranks), so every evaluation would "
        "count some windows twice; raise --val_fraction, lower --batch_size, or drop "
        "--eval_every",
        o.data, static_cast<long long>(o.batch_size * groups.dp_size)));
  if (validation && validation->distinct_batches() > 0 &&
      o.eval_batches > validation->distinct_batches()) {
    // More batches would evaluate the same windows again and count their tokens twice.
    if (leader)
      std::printf(
          "msa-train: --eval_batches=%lld but the validation split holds %lld batch(es) of "
          "%lld windows (--batch_size x data-parallel ranks): evaluating those %lld\n",
          static_cast<long long>(o.eval_batches),
          static_cast<long long>(validation->distinct_batches()),
          static_cast<long long>(o.batch_size * groups.dp_size),
          static_cast<long long>(validation->distinct_batches()));
    o.eval_batches = validation->distinct_batches();
  }
  // Parameters are replicated over dp x cp: their gradients are summed over both.
  o.trainer.dp = groups.gradient_group();
  o.optimizer.dp = groups.gradient_group();
  o.optimizer.zero1 = o.zero1;
  o.optimizer.bucket_bytes = o.bucket_mb << 20;
  o.optimizer.tp = groups.tp_size > 1 ? groups.tp.get() : nullptr;

  // The checkpoint a run continues or starts from is read before the model is built: its RoPE
  // decides the model's (below).
  std::optional<LatestCheckpoint> latest;
  std::optional<Checkpoint> init;
  bool complete = false;  // --resume at --steps: nothing to train
  FILE* metrics = nullptr;
  std::unique_ptr<FILE, int (*)(FILE*)> metrics_closer(
      nullptr, [](FILE* f) { return f ? std::fclose(f) : 0; });
  // One JSON line (rank 0); a failed write is said once on stderr (lines were lost without a
  // word: a full disk, /dev/full) and training goes on.
  bool metrics_failed = false;
  auto write_metrics_line = [&](const nlohmann::json& j) {
    std::fprintf(metrics, "%s\n",
                 j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    if ((std::fflush(metrics) != 0 || std::ferror(metrics)) && !metrics_failed) {
      metrics_failed = true;
      std::fprintf(stderr,
                   "msa-train: writing --metrics_jsonl '%s' failed (%s): its lines from step %lld "
                   "on are lost; training goes on\n",
                   o.metrics_jsonl.c_str(), std::strerror(errno),
                   static_cast<long long>(j.value("step", int64_t{0})));
    }
  };
  // Held by the writing rank for the whole run (train/checkpoint_dir_lock.h).
  std::unique_ptr<CheckpointDirLock> checkpoint_dir_lock;
  // --resume: the step of the checkpoint this rank found, and what identifies its run and state.
  int64_t resumed_step = -1;
  uint64_t resumed_fingerprint = 0;
  MSA_RETURN_IF_ERROR(agree_across_ranks(groups, [&]() -> absl::Status {
    if (!o.metrics_jsonl.empty() && leader) {
      metrics = std::fopen(o.metrics_jsonl.c_str(), "a");
      metrics_closer.reset(metrics);
      if (metrics == nullptr)
        return absl::InvalidArgumentError(
            absl::StrFormat("invalid --metrics_jsonl: cannot open '%s'", o.metrics_jsonl));
    }
    if (!o.checkpoint_dir.empty()) MSA_RETURN_IF_ERROR(ensure_dir(o.checkpoint_dir));
    // Before the checks below: another run starting in the directory checks it empty too.
    if (!o.checkpoint_dir.empty() && leader) {
      MSA_ASSIGN_OR_RETURN(checkpoint_dir_lock, CheckpointDirLock::acquire(o.checkpoint_dir));
    }
    if (!o.checkpoint_dir.empty() && !o.resume) {
      // A fresh run would write its steps over another run's files of the same numbers (and
      // --keep_last would count them as its own).
      const std::vector<int64_t> steps = list_checkpoint_steps(o.checkpoint_dir);
      if (!steps.empty())
        return absl::FailedPreconditionError(absl::StrFormat(
            "--checkpoint_dir=%s already holds %d checkpoint(s) (the newest %s): pass --resume to "
            "continue that run, or give a new or empty directory to start another (a fresh run "
            "would overwrite them)",
            o.checkpoint_dir, steps.size(), checkpoint_path(o.checkpoint_dir, steps.front())));
    }
    if (o.resume) {
      auto l = load_latest_checkpoint(o.checkpoint_dir);
      if (!l.ok()) return annotate(l.status(), "--resume");
      resumed_step = l->checkpoint.state.step;
      const TrainState& st = l->checkpoint.state;
      resumed_fingerprint = fnv1a64(absl::StrCat(
          l->checkpoint.config.to_json(), "|", l->checkpoint.run_json, "|", st.step, "|",
          st.tokens_seen, "|", st.seed, "|", st.sample_cursor, "|", st.lr_step, "|",
          st.nonfinite_in_a_row, "|", st.skipped_steps, "|", st.skipped_warmup_steps));
      if (l->checkpoint.state.step > o.trainer.steps)
        return absl::FailedPreconditionError(absl::StrFormat(
            "--resume: %s is at step %d, past --steps=%d: raise --steps to train further (the LR "
            "schedule spans --steps)",
            l->path, l->checkpoint.state.step, o.trainer.steps));
      if (l->checkpoint.state.step == o.trainer.steps) {
        if (leader)
          std::printf(
              "msa-train: %s is at step %lld = --steps: the run is complete, nothing to "
              "train (raise --steps to continue it)\n",
              l->path.c_str(), static_cast<long long>(o.trainer.steps));
        complete = true;
        return absl::OkStatus();
      }
      if (o.exit_after_step > 0 && l->checkpoint.state.step >= o.exit_after_step) {
        // Not one more step per call: the same preemption-test command must not creep forward.
        if (leader)
          std::printf(
              "msa-train: %s is at step %lld >= --exit_after_step=%lld: nothing to train (raise "
              "or drop --exit_after_step to continue it)\n",
              l->path.c_str(), static_cast<long long>(l->checkpoint.state.step),
              static_cast<long long>(o.exit_after_step));
        complete = true;
        return absl::OkStatus();
      }
      MSA_RETURN_IF_ERROR(
          adopt_checkpoint_rope(l->checkpoint.config, "--resume", l->path, leader, o));
      latest = std::move(*l);
    } else if (!o.init_from.empty()) {
      auto c = load_checkpoint(o.init_from, /*weights_only=*/true);
      if (!c.ok()) return annotate(c.status(), "--init_from");
      MSA_RETURN_IF_ERROR(check_init_architecture(c->config, o.model, o.init_from));
      MSA_RETURN_IF_ERROR(adopt_checkpoint_rope(c->config, "--init_from", o.init_from, leader, o));
      // The Hugging Face source travels into the run's own checkpoints (an export of the
      // trained model fell back to Llama in bf16).
      o.source_model = hf_source_of(c->run_json);
      o.started_from = resolved_path(o.init_from);
      init = std::move(*c);
    } else {
      o.started_from = std::string();  // from scratch
    }
    return absl::OkStatus();
  }()));
  if (o.resume) {
    // Each rank chose its newest valid checkpoint on its own (a directory not shared by every
    // node, a file one node could not read and passed over): ranks that continue different steps
    // pair their gradients across steps (the run diverged silently, saved the mix, then hung),
    // and ranks holding another run's file of the same step fail the checks after loading on
    // their own (the others waited for them). The run's flags, the model and the state identify
    // a checkpoint well enough: two files that agree on all of them come from the same run.
    const uint64_t leaders = groups.world->broadcast(resumed_fingerprint, 0);
    Tensor mine = Tensor::from_vector<double>(
        {2}, {static_cast<double>(resumed_step), resumed_fingerprint == leaders ? 0.0 : 1.0});
    Tensor all = Tensor::empty({2 * static_cast<int64_t>(groups.world_size)}, DType::kF64);
    groups.world->all_gather(mine, all);
    const double* v = all.data<double>();
    for (int r = 1; r < groups.world_size; ++r) {
      if (v[2 * r + 1] == 0) continue;
      const auto step_of = [&](int rank) { return static_cast<int64_t>(v[2 * rank]); };
      return absl::FailedPreconditionError(absl::StrFormat(
          "--resume: the ranks found different newest valid checkpoints in --checkpoint_dir=%s "
          "(rank 0: step %d; rank %d: step %d%s): every rank must read the same directory (one "
          "all nodes share) with the same files",
          o.checkpoint_dir, step_of(0), r, step_of(r),
          step_of(r) == step_of(0) ? " of another run or state" : ""));
    }
  }
  if (complete) return absl::OkStatus();

  const DType dtype = device == Device::kCUDA ? DType::kBF16 : DType::kF32;
  Transformer model(o.model, dtype, device, tensor_parallel_of(groups.tp.get()),
                    context_parallel_of(groups.cp_size > 1 ? groups.cp.get() : nullptr, zigzag));
  model.set_recompute(recompute);
  model.params().initialize(o.seed, groups.tp_rank, groups.tp_size);
  AdamW optimizer(model.params(), o.optimizer);

  int64_t first_step = 1, tokens_seen = 0, sample_cursor = 0;
  int64_t nonfinite_before = 0;  // the checkpoint's skipped steps in a row (--resume)
  std::pair<int64_t, int64_t> skipped{0, 0};  // skipped steps so far, of them in the warm-up
  std::string resumed_from;
  if (latest) {
    const Checkpoint& ckpt = latest->checkpoint;
    const std::string diff = config_difference(ckpt.config, o.model);
    if (!diff.empty())
      return absl::FailedPreconditionError(absl::StrFormat(
          "--resume: %s was written for a different model (%s)", latest->path, diff));
    // The seed decides the data order and the synthetic samples: a resumed run keeps the
    // checkpoint's unless told otherwise, and a different one given explicitly must be meant.
    const uint64_t stored_seed = static_cast<uint64_t>(ckpt.state.seed);
    if (o.explicit_seed && o.seed != stored_seed && !o.reseed)
      return absl::FailedPreconditionError(absl::StrFormat(
          "--resume: %s was written by a run with --seed=%d, but --seed=%d was given. The seed "
          "decides the data order (and the synthetic samples), so the run would not continue as "
          "it began. Drop --seed (or pass --seed=%d) to continue it exactly; add --reseed to "
          "continue with seed %d: the samples from step %d on follow the new seed, and within "
          "the current epoch some may repeat ones already trained on",
          latest->path, stored_seed, o.seed, stored_seed, o.seed, ckpt.state.step + 1));
    if (o.seed != stored_seed) {
      const std::string note =
          o.reseed ? absl::StrFormat(
                         "--reseed: the checkpoint's seed was %d; samples from step "
                         "%d on follow seed %d",
                         stored_seed, ckpt.state.step + 1, o.seed)
                   : absl::StrFormat("continuing with the checkpoint's seed %d", stored_seed);
      if (leader) std::printf("msa-train: %s\n", note.c_str());
      if (!o.reseed) o.seed = stored_seed;
      if (validation) {
        MSA_ASSIGN_OR_RETURN(validation, make_source(o, groups, true));
      }
    }
    o.source_model = hf_source_of(ckpt.run_json);
    o.started_from = started_from_of(ckpt.run_json);
    // A checkpoint without the record (older): the --init_from --auto_resume was given, if any.
    if (!o.started_from && !o.auto_resume_init_from.empty())
      o.started_from = resolved_path(o.auto_resume_init_from);
    MSA_ASSIGN_OR_RETURN(const bool new_data, reconcile_resumed_run(ckpt.run_json, latest->path,
                                                                    ckpt.state.step, leader, o));
    MSA_ASSIGN_OR_RETURN(const auto masters, checkpoint_masters(ckpt, latest->path, model,
                                                                /*allow_missing_index=*/false));
    optimizer.load_state(masters, local_parts(ckpt.m, model.params(), model.tensor_parallel()),
                         local_parts(ckpt.v, model.params(), model.tensor_parallel()));
    first_step = ckpt.state.step + 1;
    sample_cursor = new_data ? 0 : ckpt.state.sample_cursor;
    resumed_from = latest->path;
    tokens_seen = ckpt.state.tokens_seen;
    nonfinite_before = ckpt.state.nonfinite_in_a_row;
    skipped = {ckpt.state.skipped_steps, ckpt.state.skipped_warmup_steps};
    // Samples continue from the checkpoint's cursor: at another global batch (dp size,
    // --batch_size, --grad_accum) no sample is drawn twice and none is skipped.
    MSA_ASSIGN_OR_RETURN(data, make_source(o, groups, false, ckpt.state.step, sample_cursor));
    if (leader)
      std::printf("msa-train: resumed from %s (step %lld, %lld tokens seen)\n",
                  latest->path.c_str(), static_cast<long long>(ckpt.state.step),
                  static_cast<long long>(tokens_seen));
  } else if (init) {
    MSA_ASSIGN_OR_RETURN(const auto masters,
                         checkpoint_masters(*init, o.init_from, model, o.init_allow_missing_index));
    // Fresh moments (empty maps leave them as they are: zero).
    optimizer.load_state(masters, {}, {});
    if (leader) std::printf("msa-train: initialized weights from %s\n", o.init_from.c_str());
  }
  // The host copies of the loaded tensors (12 bytes per parameter after --resume) are not needed
  // once the model and optimizer hold them.
  latest.reset();
  init.reset();

  {
    // The layout: every rank's (dp, tp) coordinates and device, printed by rank 0.
    Tensor mine = Tensor::from_vector<int32_t>({1}, {gpu});
    Tensor all = Tensor::empty({groups.world_size}, DType::kI32);
    groups.world->all_gather(mine, all);
    if (leader) {
      const std::string cp = groups.cp_size > 1
                                 ? absl::StrFormat(" x cp %d (%s)", groups.cp_size, o.cp_layout)
                                 : std::string();
      std::printf("msa-train: world %d = dp %d%s x tp %d (tp innermost)%s, %s%s\n",
                  groups.world_size, groups.dp_size, cp.c_str(), groups.tp_size,
                  o.zero1 ? ", ZeRO-1 optimizer sharding" : "", device_name(device),
                  device == Device::kCUDA && groups.world_size > 1 ? " (NCCL)" : "");
      const int tp = groups.tp_size, cps = groups.cp_size;
      for (int r = 0; r < groups.world_size; ++r) {
        const int g = all.data<int32_t>()[r];
        const std::string cp_of =
            cps > 1 ? absl::StrFormat(", cp %d", (r / tp) % cps) : std::string();
        std::printf("msa-train:   rank %d: dp %d%s, tp %d, %s\n", r, r / (tp * cps), cp_of.c_str(),
                    r % tp, g >= 0 ? absl::StrFormat("cuda:%d", g).c_str() : "cpu");
      }
    }
  }
  int64_t full_param_count = 0;
  for (const ParamSpec& spec : model_param_specs(o.model))
    full_param_count += shape_numel(spec.shape);
  if (leader)
    std::printf(
        "msa-train: %d layers (%s), d_model %d, %d heads / %d kv heads, "
        "%.2fM parameters%s, "
        "%s %s%s\n",
        o.model.n_layers, o.attention_spec.c_str(), static_cast<int>(o.model.d_model),
        o.model.n_heads, o.model.n_kv_heads, full_param_count / 1e6,
        groups.tp_size > 1
            ? absl::StrFormat(" (%.2fM on each tp rank)", model.params().numel() / 1e6).c_str()
            : "",
        device_name(device), dtype_name(dtype),
        recompute == Recompute::kNone
            ? ""
            : absl::StrFormat(", recompute %s", recompute_name(recompute)).c_str());
  if (leader && o.deterministic)
    std::printf("msa-train: deterministic: %s\n",
                device == Device::kCUDA
                    ? "fixed-order GPU kernels (sorted work lists, no f32 atomics, the fallback "
                      "dense attention backward instead of cuDNN's); slower"
                    : "the CPU kernels are deterministic anyway (nothing changes)");
  if (leader)
    std::printf(
        "msa-train: data %s, batch %lld x %lld tokens per data-parallel rank, steps %lld..%lld\n",
        data->describe().c_str(), static_cast<long long>(o.batch_size),
        static_cast<long long>(o.seq_len), static_cast<long long>(first_step),
        static_cast<long long>(o.trainer.steps));
  if (leader && o.model.any_msa())
    std::printf("msa-train: MSA layers: %s\n", describe_phases(o.trainer).c_str());
  if (leader && o.trainer.lr.warmup_steps >= o.trainer.steps)
    std::printf(
        "msa-train: note: --warmup_steps=%lld >= --steps=%lld: the learning rate rises for the "
        "whole run, to %s at the last step (--lr=%s x steps / warmup_steps), and never decays\n",
        static_cast<long long>(o.trainer.lr.warmup_steps), static_cast<long long>(o.trainer.steps),
        absl::StrFormat("%g", o.trainer.lr.at(o.trainer.steps)).c_str(),
        shortest_text(o.trainer.lr.max_lr).c_str());
  std::fflush(stdout);

  install_stop_signal_handlers();
  CheckpointWriter writer(o, o.model, optimizer, model, groups, first_step - 1, sample_cursor);
  if (o.resume && resumed_from == checkpoint_path(o.checkpoint_dir, first_step - 1))
    writer.mark_valid(first_step - 1);
  Trainer trainer(model, optimizer, *data, o.trainer);
  trainer.set_skipped_before(skipped.first, skipped.second);
  absl::Status failure;
  int64_t last_step = first_step - 1;
  bool last_skipped = false;  // the last step ran was not finite (not applied)
  int64_t nonfinite_in_a_row = nonfinite_before;  // ending at last_step (saved with it)
  int64_t last_applied = -1;  // the last step this run applied
  // Collective. A signal may reach only some ranks: stop when any rank saw one.
  const std::function<bool()> any_rank_stopping = [&] {
    return groups.world->all_reduce_sum(static_cast<int64_t>(stop_requested() ? 1 : 0)) > 0;
  };
  const absl::Status run_status = trainer.run(
      first_step,
      [&](const StepMetrics& m) {
        last_step = m.step;
        last_skipped = m.skipped;
        nonfinite_in_a_row = m.nonfinite_in_a_row;
        skipped = {m.skipped_steps, m.skipped_warmup_steps};
        if (!m.skipped) last_applied = m.step;
        tokens_seen += m.tokens;
        if (metrics != nullptr) {
          nlohmann::json j;
          j["step"] = m.step;
          j["loss"] = m.loss;
          j["lm_loss"] = m.lm_loss;
          j["index_loss"] = m.index_loss;
          j["grad_norm"] = m.grad_norm;
          j["lr"] = m.lr;
          j["tokens"] = m.tokens;
          if (m.skipped) j["skipped"] = true;  // not finite: not applied
          if (!m.index_recall.empty()) j["index_recall"] = m.index_recall;
          if (!m.block_recall.empty()) j["block_recall"] = m.block_recall;
          if (!m.index_recall_ceiling.empty()) j["index_recall_ceiling"] = m.index_recall_ceiling;
          if (!m.max_pool_recall_ceiling.empty())
            j["max_pool_recall_ceiling"] = m.max_pool_recall_ceiling;
          write_metrics_line(j);
        }
        // (A diverged step ends the run: no evaluation of the weights it stopped on, no exit.)
        if (m.diverged) return false;
        if (validation && m.step % o.eval_every == 0) {
          // A stop signal ends the evaluation at the next batch: the checkpoint must not wait for
          // it past a scheduler's grace period.
          const EvalResult r = evaluate(model, *validation, static_cast<int>(o.eval_batches),
                                        msa_mode_at(o.trainer, m.step),
                                        o.model.any_msa() && is_retrieval_data(o.data),
                                        groups.gradient_group(), any_rank_stopping);
          if (leader && r.stopped) {
            std::printf("eval  %6lld | skipped: stopping on a signal\n",
                        static_cast<long long>(m.step));
            std::fflush(stdout);
          } else if (leader) {
            std::printf("eval  %6lld | val_loss %.4f | val_ppl %.2f | %lld tokens%s\n",
                        static_cast<long long>(m.step), r.loss, r.perplexity,
                        static_cast<long long>(r.tokens), format_answer_recall(r).c_str());
            std::fflush(stdout);
            if (metrics) {
              // The validation record at full precision beside the step's (it reached stdout only).
              nlohmann::json j;
              j["kind"] = "validation";  // the steps' lines have no "kind"
              j["step"] = m.step;
              j["val_loss"] = r.loss;
              j["val_ppl"] = r.perplexity;
              j["val_tokens"] = r.tokens;
              if (!r.answer_index_recall.empty())
                j["val_answer_index_recall"] = r.answer_index_recall;
              if (!r.answer_block_recall.empty())
                j["val_answer_block_recall"] = r.answer_block_recall;
              if (!r.answer_index_recall_ceiling.empty())
                j["val_answer_index_recall_ceiling"] = r.answer_index_recall_ceiling;
              write_metrics_line(j);
            }
          }
        }
        if (o.checkpoint_every > 0 && m.step % o.checkpoint_every == 0) {
          // A step that was not applied saves nothing: its checkpoint would hold the weights that
          // just gave a non-finite loss or gradient under a newer step number, and --keep_last
          // would delete older, better ones to make room for it.
          if (m.skipped) {
            if (leader)
              std::printf(
                  "msa-train: no checkpoint at step %lld: the step was not finite (not applied); "
                  "the "
                  "newest checkpoint is %s\n",
                  static_cast<long long>(m.step), writer.newest().c_str());
            std::fflush(stdout);
          } else {
            failure = writer.save(m.step, tokens_seen, 0, skipped);
            if (!failure.ok()) return false;
          }
        }
        if (o.exit_after_step > 0 && m.step >= o.exit_after_step) {
          if (leader)
            std::printf("msa-train: exiting after step %lld as asked (--exit_after_step)\n",
                        static_cast<long long>(m.step));
          return false;
        }
        return !any_rank_stopping();
      },
      nonfinite_before);
  // A diverged run (the trainer's error) writes no final checkpoint: the steps it applied since
  // the newest one led into the streak (Megatron-LM and Lightning stop on a NaN the same way);
  // saved, they would be what --resume picks, and --keep_last would prune an older, sound file
  // for them. Say which checkpoint to go back to.
  if (!run_status.ok())
    return absl::Status(run_status.code(),
                        absl::StrCat(run_status.message(), ". The newest checkpoint is ",
                                     writer.newest()));
  MSA_RETURN_IF_ERROR(failure);
  // After a skipped last step the weights are those of the last applied one: saved (under the
  // last step's number) only when applied steps since the newest checkpoint would be lost. The
  // decisions are the same on every rank (the guard's is collective).
  if (last_skipped && last_applied <= writer.last_saved()) {
    if (!o.checkpoint_dir.empty() && leader)
      std::printf(
          "msa-train: no final checkpoint: step %lld was not finite (not applied); the newest "
          "checkpoint is %s\n",
          static_cast<long long>(last_step), writer.newest().c_str());
  } else if (writer.last_saved() != last_step && last_step >= first_step) {
    if (last_skipped && !o.checkpoint_dir.empty() && leader)
      std::printf(
          "msa-train: step %lld was not finite (not applied): the final checkpoint holds the "
          "weights of step %lld, the last applied\n",
          static_cast<long long>(last_step), static_cast<long long>(last_applied));
    MSA_RETURN_IF_ERROR(writer.save(last_step, tokens_seen, nonfinite_in_a_row, skipped));
  }
  if (device == Device::kCUDA && leader)
    std::printf("msa-train: peak GPU memory in tensors %.2f GiB (rank 0)\n",
                cuda_memory_stats().peak_bytes / 1073741824.0);
  if (stop_requested() && leader) {
    std::printf(
        "msa-train: stopped by signal %d after step %lld; resume with --resume "
        "--checkpoint_dir=%s\n",
        stop_signal_number(), static_cast<long long>(last_step),
        o.checkpoint_dir.empty() ? "(none: no --checkpoint_dir was given)"
                                 : o.checkpoint_dir.c_str());
  }
  return absl::OkStatus();
}

}  // namespace msa
