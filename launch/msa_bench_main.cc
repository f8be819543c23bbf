// msa-bench: benchmark tables for the GPU kernels and the training step (launch/bench/).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/deterministic.h"
#include "core/tensor.h"
#include "launch/bench/bench.h"
#include "launch/bench/flags.h"
#include "launch/program_usage.h"

ABSL_FLAG(std::string, seqs, "8192,32768,131072",
          "msa: sequence lengths timed forward and backward.");
ABSL_FLAG(std::string, model_seqs, "4096", "dense/step: sequence lengths.");
ABSL_FLAG(std::string, fwd_only_seqs, "",
          "msa: further sequence lengths timed forward only (e.g. 524288,1048576).");
ABSL_FLAG(int, heads, 64, "msa: query heads H (the paper's shape: 64).");
ABSL_FLAG(int, groups, 4, "msa: KV groups G (the paper's shape: 4).");
ABSL_FLAG(int, head_dim, 128, "msa: head dimension d.");
ABSL_FLAG(int, block_size, 128, "MSA block size B.");
ABSL_FLAG(int, topk, 16, "MSA top-k (blocks per query and group, local included).");
ABSL_FLAG(int, index_dim, 128, "MSA index dimension d_I.");
ABSL_FLAG(int, iters, 3,
          "Timed runs per measurement (median reported; one warm-up run first; msa-bench dense "
          "times at least 5).");
ABSL_FLAG(std::string, selection, "random",
          "msa: the index inputs: 'random' (N(0, 1): each query selects its own blocks) or "
          "'sink' (every query's top blocks are the first k-1, as attention sinks or facts that "
          "every query reads make them: a few KV blocks are selected by all queries).");
ABSL_FLAG(bool, cudnn, true, "msa: also time cuDNN dense causal flash attention on the same Q/K/V.");
ABSL_FLAG(int, recall_stride, 16,
          "msa: also time the selector measures (index and block recall, their ceilings: what "
          "msa-train --recall_every logs) at every n-th query on the GPU, and the CPU's f64 "
          "reference where it scores at most 2^26 (query, key) pairs (0: off).");
ABSL_FLAG(bool, warmup_kl, true,
          "msa: also time the index warm-up's loss (dense attention's target: the KL over every "
          "s <= t, flash style) on the same inputs, printed under each length's row.");
ABSL_FLAG(std::string, model, "1b",
          "dense/step: model preset: '1b' (d_model 2048, 16 layers, 16 heads, 4 KV heads, head "
          "dim 128, ffn 5632, vocab 32000) or 'small' (d_model 512, 4 layers, 8/2 heads, ffn "
          "1408, vocab 32000).");
ABSL_FLAG(int, layers, 0, "step: override the preset's number of layers (0: keep).");
ABSL_FLAG(int, batch, 1,
          "msa/dense/step: sequences per call (msa: the batch's sequences share kernel launches, "
          "as in training).");
ABSL_FLAG(std::string, attention, "dense",
          "step: 'dense', 'msa' (all layers MSA with --block_size/--topk/--index_dim), 'warmup' "
          "(the MSA model in its index warm-up: dense attention plus the KL over every causal "
          "token, as msa-train's --dense_attention_steps and msa-convert's recipe run it), "
          "'both' (dense and msa) or 'all' (the three side by side).");
ABSL_FLAG(std::string, recompute, "none", "step: activation recomputation: none, attention, full.");
ABSL_FLAG(int, steps, 5, "step: timed training steps (after 2 warm-up steps).");
ABSL_FLAG(int, cp_shards, 0,
          "msa, batch 1: also time each context-parallel rank's share of every --seqs length "
          "split into this many shards (its queries over the keys up to its shard's end), "
          "contiguous and zig-zag (0: off).");
ABSL_FLAG(bool, deterministic, false,
          "Time the deterministic kernels (msa-train --deterministic: fixed summation order, "
          "per-slot partials instead of f32 atomics).");
ABSL_FLAG(double, peak_tflops, 989.4,
          "Peak dense bf16 TFLOP/s that MFU is relative to (H100 SXM: 989.4).");

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Benchmarks the GPU kernels and training steps and prints tables.\n"
      "  msa-bench msa    MSA kernels (indexer, sparse attention fwd/bwd, index loss) vs cuDNN\n"
      "                   dense causal flash attention on the same inputs: times, speed-ups,\n"
      "                   TFLOP/s [--seqs=8192,32768,131072 --fwd_only_seqs=LIST (e.g. 524288)\n"
      "                    --heads=64 --groups=4 --head_dim=128 --index_dim=128 --block_size=128\n"
      "                    --topk=16 --batch=1 --cp_shards=C: each context-parallel rank's\n"
      "                    share]\n"
      "  msa-bench dense  bf16 GEMMs (cuBLASLt) at the model's shapes and cuDNN attention\n"
      "                   fwd/bwd TFLOP/s [--model=1b --model_seqs=4096 --batch=1]\n"
      "  msa-bench step   whole training steps (forward, backward, AdamW): tokens/s and MFU\n"
      "                   [--model=1b --model_seqs=4096 --attention=dense|msa|warmup|both|all\n"
      "                    --recompute=none]");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (msa::has_stray_arguments(rest, 2, "msa-bench")) return 1;
  const std::string which = rest.size() == 2 ? rest[1] : "";
  if (which != "msa" && which != "dense" && which != "step") {
    std::fprintf(stderr, "msa-bench: expected one benchmark name: msa, dense or step (see --help)\n");
    return 1;
  }
  if (const std::string bad = msa::bench::check_flags(which); !bad.empty()) {
    std::fprintf(stderr, "msa-bench: %s\n", bad.c_str());
    return 1;
  }
  msa::set_deterministic(absl::GetFlag(FLAGS_deterministic));
#if MSA_HAS_CUDA
  if (!msa::cuda_available()) {
    std::fprintf(stderr, "msa-bench: no CUDA device\n");
    return 1;
  }
  if (which == "msa") return msa::bench::bench_msa();
  if (which == "dense") return msa::bench::bench_dense();
  return msa::bench::bench_step();
#else
  std::fprintf(stderr, "msa-bench: built without CUDA (-DMSA_CUDA=OFF)\n");
  return 1;
#endif
}
