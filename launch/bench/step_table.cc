// msa-bench step: whole training steps of a model on one GPU, exactly the calls msa-train makes
// (zero grads, forward, backward, global gradient norm, AdamW with f32 masters), timed with the
// host clock around synchronized steps. Prints tokens/s and MFU = model FLOPs per second (see
// model/model_flops.h: 6N per token plus attention, recomputation not counted) over --peak_tflops.
#if MSA_HAS_CUDA
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "launch/bench/bench.h"
#include "launch/bench/flags.h"
#include "launch/bench/model_preset.h"
#include "model/model_flops.h"
#include "model/transformer.h"
#include "train/optimizer.h"

namespace msa::bench {
namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void sync() { MSA_CHECK(cudaDeviceSynchronize() == cudaSuccess, "step bench: CUDA error"); }

// A row of the table: the model's layers (all dense or all MSA) and how MSA layers run.
struct StepKind {
  const char* name;
  bool all_msa;
  MsaMode mode;  // kDenseWarmup: the index warm-up's steps (dense attention + full-support KL)
};

struct StepTimes {
  double fwd = 0, bwd = 0, opt = 0, total = 0;
  double loss = 0;
};

}  // namespace

int bench_step() {
  const std::string attention = absl::GetFlag(FLAGS_attention);
  std::vector<StepKind> kinds;
  if (attention == "dense" || attention == "both" || attention == "all")
    kinds.push_back({"dense", false, MsaMode::kSparse});
  if (attention == "msa" || attention == "both" || attention == "all")
    kinds.push_back({"msa", true, MsaMode::kSparse});
  if (attention == "warmup" || attention == "all")
    kinds.push_back({"warmup", true, MsaMode::kDenseWarmup});
  if (kinds.empty()) {
    std::fprintf(stderr, "msa-bench: invalid --attention '%s' (dense, msa, warmup, both or all)\n",
                 attention.c_str());
    return 1;
  }
  const auto recompute = parse_recompute(absl::GetFlag(FLAGS_recompute));
  if (!recompute.ok()) {
    std::fprintf(stderr, "msa-bench: %s\n", std::string(recompute.status().message()).c_str());
    return 1;
  }
  const int64_t batch = absl::GetFlag(FLAGS_batch);
  const int steps = std::max(absl::GetFlag(FLAGS_steps), 1);
  const double peak = absl::GetFlag(FLAGS_peak_tflops);
  std::printf(
      "Training step (bf16 compute, f32 master weights and AdamW), model %s, batch %lld, "
      "recompute %s; the step of median time of %d, after 2 warm-up steps\n",
      absl::GetFlag(FLAGS_model).c_str(), static_cast<long long>(batch), recompute_name(*recompute),
      steps);
  std::printf("%-6s | %7s | %8s | %8s %8s %7s %8s | %9s | %7s | %6s | %8s | %6s\n", "attn",
              "seq", "params", "fwd ms", "bwd ms", "opt ms", "step ms", "tokens/s", "TFLOP/s",
              "MFU", "peak GiB", "loss");
  for (int64_t T : parse_lengths(absl::GetFlag(FLAGS_model_seqs), "model_seqs")) {
    for (const StepKind& kind : kinds) {
      const ModelConfig c = preset_model(absl::GetFlag(FLAGS_model), kind.all_msa);
      reset_cuda_peak_memory();
      std::vector<StepTimes> times;
      int64_t n_params = 0;
      {
        Transformer model(c, DType::kBF16, Device::kCUDA);
        model.set_recompute(*recompute);
        model.params().initialize(1);
        n_params = model.params().numel();
        AdamW opt(model.params(), OptimizerConfig{});
        std::vector<int32_t> tok(batch * T), tgt(batch * T);
        for (int64_t i = 0; i < batch * T; ++i)
          tok[i] = static_cast<int32_t>(philox4x32(9, i).v[0] % c.vocab_size);
        for (int64_t i = 0; i < batch * T; ++i) tgt[i] = tok[(i + 1) % (batch * T)];
        const Tensor tokens = Tensor::from_vector<int32_t>({batch, T}, tok).to(Device::kCUDA);
        const Tensor targets = Tensor::from_vector<int32_t>({batch, T}, tgt).to(Device::kCUDA);
        ForwardOptions fo;
        fo.msa_mode = kind.mode;
        for (int s = 1; s <= steps + 2; ++s) {
          StepTimes t;
          sync();
          const double t_zero = now_ms();
          model.params().zero_grads();
          sync();
          const double t0 = now_ms();
          t.loss = model.forward(tokens, targets, fo).total_loss;
          sync();
          const double t1 = now_ms();
          model.backward(1.0);
          sync();
          const double t2 = now_ms();
          opt.step(s, 1e-4, opt.grad_norm());
          sync();
          const double t3 = now_ms();
          t.fwd = t1 - t0;
          t.bwd = t2 - t1;
          t.opt = t3 - t2;
          t.total = t3 - t_zero;  // the step zeroes the gradients too (in no column)
          if (s > 2) times.push_back(t);
        }
      }
      // Every column from the step of median total time, so that fwd + bwd + opt (+ zeroing the
      // gradients) add up to the step's time.
      std::sort(times.begin(), times.end(),
                [](const StepTimes& a, const StepTimes& b) { return a.total < b.total; });
      const StepTimes& median = times[times.size() / 2];
      const double step_ms = median.total;
      const double tokens_per_s = batch * T / (step_ms * 1e-3);
      // The warm-up attends densely: its model FLOPs are the dense model's (the index loss, like
      // recomputation, is not counted).
      const ModelConfig flops_config =
          kind.mode == MsaMode::kDenseWarmup ? preset_model(absl::GetFlag(FLAGS_model), false) : c;
      const double tflops = train_flops_per_token(flops_config, T) * tokens_per_s / 1e12;
      std::printf(
          "%-6s | %7lld | %7.2fB | %8.1f %8.1f %7.1f %8.1f | %9.0f | %7.1f | %5.1f%% | %8.2f | "
          "%6.3f\n",
          kind.name, static_cast<long long>(T), n_params / 1e9, median.fwd, median.bwd, median.opt,
          step_ms, tokens_per_s, tflops, 100 * tflops / peak,
          cuda_memory_stats().peak_bytes / 1073741824.0, median.loss);
      std::fflush(stdout);
    }
  }
  std::printf(
      "MFU counts 6N FLOPs per token (N = %s) plus causal attention (12 H d per attended key "
      "and layer, 4 H d forward x 3; MSA layers the keys of their selected blocks, plus their "
      "index scores, 2 G d_I per earlier token), over a %.1f TFLOP/s peak; step ms includes "
      "zeroing the gradients.\n",
      "projection and LM-head weights", peak);
  return 0;
}

}  // namespace msa::bench
#endif  // MSA_HAS_CUDA
