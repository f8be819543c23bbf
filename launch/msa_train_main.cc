// msa-train: trains a dense / MSA decoder from scratch, from a converted checkpoint, or resumes.
//   mpirun -np N msa-train --flagfile=launch/recipes/small_msa.flags
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "launch/program_usage.h"
#include "launch/train_program.h"

// ---- model -----------------------------------------------------------------------------------
ABSL_FLAG(int64_t, vocab_size, 257, "Vocabulary size (257 = byte-level tokens + EOS).");
ABSL_FLAG(int64_t, d_model, 128, "Model width D.");
ABSL_FLAG(int64_t, n_layers, 2, "Number of decoder layers.");
ABSL_FLAG(int64_t, n_heads, 4, "Query heads H.");
ABSL_FLAG(int64_t, n_kv_heads, 2, "KV heads / groups G (H must be divisible by G).");
ABSL_FLAG(int64_t, head_dim, 32, "Head dimension d (even: RoPE rotates pairs).");
ABSL_FLAG(int64_t, ffn_dim, 384, "SwiGLU hidden size F.");
// Optional, so that --init_from / --resume can tell "no --rope_theta" (the checkpoint's RoPE).
ABSL_FLAG(std::optional<double>, rope_theta, std::nullopt,
          "RoPE base theta (10000 when not given). With --init_from or --resume the checkpoint's "
          "RoPE is used (theta, llama3 / linear scaling, rotary dims); an explicit value replaces "
          "the theta on --init_from (context extension) and is refused on --resume.");
ABSL_FLAG(double, norm_eps, 1e-5, "RMSNorm epsilon.");
ABSL_FLAG(bool, tied_embeddings, false, "Share the embedding and LM head weights.");
ABSL_FLAG(bool, qkv_bias, false, "Biases on the q/k/v projections (Qwen2 style).");
ABSL_FLAG(bool, qk_norm, false, "RMSNorm on q and k per head before RoPE (Qwen3 style).");
ABSL_FLAG(std::string, attention, "msa",
          "Attention kind of every layer: 'dense', 'msa', or a comma-separated per-layer list "
          "such as 'dense,msa,msa'.");
ABSL_FLAG(int64_t, msa_block_size, 128, "MSA block size B (tokens per KV block).");
ABSL_FLAG(int64_t, msa_topk, 16,
          "MSA blocks attended per query and KV group, the local block included.");
ABSL_FLAG(int64_t, msa_index_dim, 128,
          "MSA index dimension d_I: each KV group's index query head and the one index key head "
          "shared by the groups.");
ABSL_FLAG(int64_t, msa_index_rotary_dim, 0,
          "Not the paper's MSA (its index branch has no RoPE): rotate the leading dims of the "
          "index query and key heads with the model's RoPE frequencies. 0: none; else even and "
          "<= --msa_index_dim.");
ABSL_FLAG(double, msa_index_loss_weight, 1.0,
          "Weight lambda of the index distillation loss: L = L_LM + lambda * (sum over MSA layers "
          "of each layer's KL).");

// ---- run -------------------------------------------------------------------------------------
ABSL_FLAG(std::string, device, "auto",
          "Where to train: 'cpu', 'cuda', or 'auto' (cuda when present).");
ABSL_FLAG(std::string, data, "synthetic:repeat",
          "Training data: 'synthetic:repeat' (a repeating sequence), 'synthetic:kv-recall' or "
          "'synthetic:needle' (long-context retrieval tasks generated on the fly, see "
          "docs/data.md), or a glob of token shards written by msa-data (e.g. "
          "'shards:data/train-*.tok' or just the glob).");
ABSL_FLAG(int64_t, steps, 200, "Total optimizer steps.");
ABSL_FLAG(int64_t, batch_size, 4, "Sequences per micro-batch per data-parallel rank.");
ABSL_FLAG(int64_t, seq_len, 256, "Tokens per sequence.");
ABSL_FLAG(int64_t, grad_accum, 1, "Micro-batches per optimizer step.");
ABSL_FLAG(double, lr, 1e-3, "Peak learning rate.");
ABSL_FLAG(double, min_lr, 1e-4, "Final learning rate of the cosine schedule.");
ABSL_FLAG(int64_t, warmup_steps, 20, "Linear learning-rate warm-up steps.");
ABSL_FLAG(double, weight_decay, 0.1, "AdamW decoupled weight decay (never on norms or biases).");
ABSL_FLAG(double, beta1, 0.9, "AdamW beta1.");
ABSL_FLAG(double, beta2, 0.95, "AdamW beta2.");
ABSL_FLAG(double, adam_eps, 1e-8, "AdamW epsilon.");
ABSL_FLAG(double, grad_clip, 1.0, "Clip the global gradient norm to this value (0: off).");
// Optional, so that --resume can tell "no --seed" (keep the checkpoint's) from an explicit one.
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt,
          "Seed of the run (initialization, data order, synthetic data); 1234 when not given. "
          "With --resume the checkpoint's seed is used; an explicit --seed that differs from it "
          "is refused unless --reseed.");
ABSL_FLAG(bool, reseed, false,
          "With --resume and an explicit --seed that differs from the checkpoint's: continue "
          "with the new seed (samples from the resumed step on follow it; within the current "
          "epoch some may repeat ones already trained on).");
ABSL_FLAG(int64_t, index_warmup_steps, 0,
          "Optional index warm-up with the backbone frozen (e.g. for a converted dense model whose "
          "outputs must stay unchanged): for the first N steps MSA layers attend densely and only "
          "the index branch trains (KL over every causal token). Runs before the dense-attention "
          "warm-up (--dense_attention_fraction / --dense_attention_steps).");
ABSL_FLAG(int64_t, synthetic_pairs, 4, "Facts per sample of --data=synthetic:kv-recall (1..8).");
ABSL_FLAG(double, synthetic_depth, -1,
          "Fractional depth (0..1) of the facts of the synthetic tasks; < 0: random per sample.");
ABSL_FLAG(bool, new_data, false,
          "With --resume: continue on data flags (--data, --seq_len, --val_fraction, "
          "--pack_documents, --synthetic_*) that differ from the checkpoint's run, the new data's "
          "samples from "
          "its first (a second phase: another dataset, a longer context). Without it such a "
          "change is refused: the checkpoint's sample cursor counts the old data's windows.");
ABSL_FLAG(double, val_fraction, 0.01,
          "Token shards: fraction of the windows held out as the validation split.");
ABSL_FLAG(bool, pack_documents, false,
          "Token shards: treat the documents inside each training window as separate sequences "
          "(attention, MSA block selection and index loss never cross a document start; RoPE "
          "positions restart at each document). A document starts at the window's first token "
          "and after every EOS; the EOS id comes from the shards' msa-data metadata file "
          "<prefix>.json (refused without one). See docs/data.md.");
ABSL_FLAG(int64_t, eval_every, 0,
          "Validation loss and perplexity every N steps (0: never); on synthetic:kv-recall and "
          "synthetic:needle also each MSA layer's index and block recall at the answer positions "
          "(not with --cp > 1, whose shards would have to merge them). Needs validation data: "
          "not with --data=synthetic:repeat (one training batch).");
ABSL_FLAG(int64_t, eval_batches, 8, "Validation batches per evaluation.");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Directory for HDF5 checkpoints ckpt-<step>.h5 (written every --checkpoint_every steps, "
          "at the end, and on SIGTERM/SIGINT). Empty: no checkpoints.");
ABSL_FLAG(int64_t, checkpoint_every, 0,
          "Checkpoint every N steps (0: only at the end / on a signal).");
ABSL_FLAG(int64_t, keep_last, 0,
          "Keep only the newest N valid checkpoints in --checkpoint_dir (0: keep all). Older ones "
          "are deleted only after the new one is on disk and read back valid; files newer than "
          "it (another run's, or corrupt ones) and files that do not validate are never deleted "
          "(docs/checkpoint.md).");
ABSL_FLAG(int64_t, max_nonfinite_steps, 3,
          "A step whose loss or gradient norm is NaN or infinite is not applied (weights and "
          "optimizer state unchanged); after this many such steps in a row msa-train stops with "
          "an error (exit 1) and writes no checkpoint from them.");
ABSL_FLAG(
    bool, resume, false,
    "Continue from the newest valid checkpoint in --checkpoint_dir (weights, optimizer, step, "
    "data position), bit-exactly as if the run had not stopped.");
ABSL_FLAG(bool, auto_resume, false,
          "--resume when --checkpoint_dir holds checkpoints, else start a fresh run (from "
          "--init_from when given): one command for the first launch and every relaunch of a "
          "preemptible or requeued job. With --resume: a checkpoint is required.");
ABSL_FLAG(
    std::string, init_from, "",
    "Start from the weights of this checkpoint (optimizer state and step start fresh), e.g. a "
    "model converted by msa-convert.");
ABSL_FLAG(bool, init_allow_missing_index, false,
          "With --init_from: MSA index-branch weights absent from the file keep their fresh "
          "initialization (a dense checkpoint turned MSA).");
ABSL_FLAG(int64_t, exit_after_step, 0,
          "Stop after this step and write a checkpoint, as if the job were preempted (the LR "
          "schedule still spans --steps; continue later with --resume). 0: run to --steps.");
ABSL_FLAG(std::string, metrics_jsonl, "",
          "Append one JSON line of metrics per step (full precision) to this file, and one per "
          "--eval_every validation (val_loss, val_ppl, val_tokens).");
ABSL_FLAG(
    int64_t, tp, 1,
    "Tensor-parallel size: world = dp x cp x tp with tp innermost (mpirun -np N gives dp = N / "
    "(cp tp)). "
    "Must divide --n_kv_heads, --ffn_dim and --vocab_size.");
ABSL_FLAG(
    int64_t, cp, 1,
    "Context-parallel size: world = dp x cp x tp with tp innermost, then cp (mpirun -np N gives "
    "dp = N / (cp * tp)). The cp ranks of one data-parallel replica split every sequence into cp "
    "shards of --seq_len / cp tokens (two chunks of --seq_len / 2 cp each with the default "
    "--cp_layout=zigzag; for MSA layers each chunk a multiple of --msa_block_size) and all-gather "
    "the keys before each attention. CPU (MPI) and CUDA (NCCL).");
ABSL_FLAG(std::string, cp_layout, "zigzag",
          "With --cp > 1: 'zigzag' (the default: the sequence cut into 2 cp chunks, rank c holds "
          "chunks c and 2 cp - 1 - c, so every rank gets as much of the work that grows with the "
          "position, the MSA indexer and dense attention; each chunk a multiple of "
          "--msa_block_size) or 'contiguous' (rank c holds tokens [c T/cp, (c+1) T/cp): half as "
          "many, twice as long chunks; the last rank does the most attention work).");
ABSL_FLAG(int64_t, gpu, -1, "CUDA device of this rank (-1: node-local rank % number of devices).");
ABSL_FLAG(bool, zero1, false,
          "Shard the fp32 master weights and AdamW moments over the data-parallel ranks (ZeRO-1: "
          "gradients reduce-scattered, parameters all-gathered).");
ABSL_FLAG(std::string, recompute, "none",
          "Activation recomputation: 'none' (keep all activations), 'attention' (recompute each "
          "attention block in the backward) or 'full' (keep only each layer's input and recompute "
          "the layer). Same results, less memory: for long sequences.");
ABSL_FLAG(bool, skip_memory_check, false,
          "Start even when the memory estimate (logged at startup: parameters, gradients, AdamW "
          "state, activations per --recompute) exceeds the free memory of the GPU (CUDA) or the "
          "node (CPU MemAvailable); without it such a run is refused before allocating.");
ABSL_FLAG(bool, deterministic, false,
          "Bit-reproducible runs: two GPU runs with the same flags give bit-identical losses and "
          "weights (same GPU model, software and layout), at a speed cost: fixed-order kernel "
          "variants instead of f32 atomics, and the slower fallback kernel for the dense attention "
          "backward instead of cuDNN's. On the CPU everything is deterministic already (no-op).");
ABSL_FLAG(int64_t, bucket_mb, 25, "Data-parallel gradient all-reduce bucket size in MB.");
ABSL_FLAG(double, dense_attention_fraction, 0.02,
          "Index warm-up, on by default: for the first ceil(F * --steps) steps (after any "
          "--index_warmup_steps) MSA layers attend densely while everything trains on L_LM + "
          "lambda * KL over every causal token, so the selector learns where attention looks "
          "before it decides what attention may see; then sparse training. The paper spends ~1.3% "
          "of the token budget; 0 starts sparse. Ignored without MSA layers.");
ABSL_FLAG(int64_t, dense_attention_steps, -1,
          "The index warm-up of --dense_attention_fraction as a step count instead (>= 0 "
          "overrides the fraction; -1: use the fraction).");
ABSL_FLAG(int64_t, log_every, 10, "Print a metrics line every N steps.");
ABSL_FLAG(int64_t, recall_every, 50,
          "Every N steps log each MSA layer's index recall (the share of the dense attention "
          "mass inside the selected blocks) and block recall (the share of the attention's own "
          "top-k blocks that the selector picked, the paper's metric), recall ceiling (the mass "
          "inside those top-k blocks: the most index recall any k blocks keep) and max-pool "
          "ceiling (what the paper's rule keeps fed perfect token scores); 0: never.");
ABSL_FLAG(int64_t, recall_stride, 16,
          "Recall samples one query position in every N (at a phase that moves through the N, "
          "so every offset within a block is sampled alike); raised for long sequences so that "
          "a measurement scores at most 2^28 (query, key) pairs per sequence and layer on the GPU "
          "(f32) or 2^22 on the CPU (f64).");

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Trains a decoder-only LM whose attention layers are dense GQA or MiniMax Sparse Attention.\n"
      "  msa-train --flagfile=launch/recipes/small_msa.flags\n"
      "  mpirun -np 4 msa-train --flagfile=... --tp=2\n"
      "  mpirun -np 4 msa-train --flagfile=... --cp=2 --device=cpu   (context parallelism)\n"
      "Every flag is listed below with its default; --flagfile=FILE reads flags from a file.");
  if (msa::has_stray_arguments(absl::ParseCommandLine(argc, argv), 1, "msa-train")) return 1;

  // Every integer flag parses as 64 bits; the ones stored in int fields are narrowed here, so a
  // value past 2^31 is refused naming its flag instead of wrapping.
  absl::Status flags_status;
  auto to_int = [&](const char* flag, int64_t value, int& field) {
    if (!flags_status.ok()) return;
    absl::StatusOr<int> v = msa::int_flag_value(flag, value);
    if (v.ok())
      field = *v;
    else
      flags_status = v.status();
  };
  msa::TrainProgramOptions o;
  o.model.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  o.model.d_model = absl::GetFlag(FLAGS_d_model);
  to_int("n_layers", absl::GetFlag(FLAGS_n_layers), o.model.n_layers);
  to_int("n_heads", absl::GetFlag(FLAGS_n_heads), o.model.n_heads);
  to_int("n_kv_heads", absl::GetFlag(FLAGS_n_kv_heads), o.model.n_kv_heads);
  to_int("head_dim", absl::GetFlag(FLAGS_head_dim), o.model.head_dim);
  o.model.ffn_dim = absl::GetFlag(FLAGS_ffn_dim);
  const std::optional<double> rope_theta = absl::GetFlag(FLAGS_rope_theta);
  o.model.rope_theta = rope_theta.value_or(10000.0);
  o.explicit_rope_theta = rope_theta.has_value();
  o.model.norm_eps = absl::GetFlag(FLAGS_norm_eps);
  o.model.tied_embeddings = absl::GetFlag(FLAGS_tied_embeddings);
  o.model.qkv_bias = absl::GetFlag(FLAGS_qkv_bias);
  o.model.qk_norm = absl::GetFlag(FLAGS_qk_norm);
  o.attention_spec = absl::GetFlag(FLAGS_attention);
  to_int("msa_block_size", absl::GetFlag(FLAGS_msa_block_size), o.model.msa.block_size);
  to_int("msa_topk", absl::GetFlag(FLAGS_msa_topk), o.model.msa.topk);
  to_int("msa_index_dim", absl::GetFlag(FLAGS_msa_index_dim), o.model.msa.index_dim);
  to_int("msa_index_rotary_dim", absl::GetFlag(FLAGS_msa_index_rotary_dim),
         o.model.msa.index_rotary_dim);
  o.model.msa.index_loss_weight = absl::GetFlag(FLAGS_msa_index_loss_weight);

  o.device = absl::GetFlag(FLAGS_device);
  o.data = absl::GetFlag(FLAGS_data);
  o.batch_size = absl::GetFlag(FLAGS_batch_size);
  o.seq_len = absl::GetFlag(FLAGS_seq_len);
  const std::optional<uint64_t> seed = absl::GetFlag(FLAGS_seed);
  o.seed = seed.value_or(o.seed);
  o.explicit_seed = seed.has_value();
  o.reseed = absl::GetFlag(FLAGS_reseed);
  o.new_data = absl::GetFlag(FLAGS_new_data);
  o.trainer.steps = absl::GetFlag(FLAGS_steps);
  to_int("grad_accum", absl::GetFlag(FLAGS_grad_accum), o.trainer.grad_accum);
  o.trainer.index_warmup_steps = absl::GetFlag(FLAGS_index_warmup_steps);
  o.trainer.lr.max_lr = absl::GetFlag(FLAGS_lr);
  o.trainer.lr.min_lr = absl::GetFlag(FLAGS_min_lr);
  o.trainer.lr.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  o.trainer.lr.total_steps = o.trainer.steps;
  to_int("log_every", absl::GetFlag(FLAGS_log_every), o.trainer.log_every);
  to_int("max_nonfinite_steps", absl::GetFlag(FLAGS_max_nonfinite_steps),
         o.trainer.max_nonfinite_steps);
  to_int("recall_every", absl::GetFlag(FLAGS_recall_every), o.trainer.recall_every);
  o.trainer.recall_query_stride = absl::GetFlag(FLAGS_recall_stride);
  to_int("synthetic_pairs", absl::GetFlag(FLAGS_synthetic_pairs), o.synthetic_pairs);
  o.synthetic_depth = absl::GetFlag(FLAGS_synthetic_depth);
  o.val_fraction = absl::GetFlag(FLAGS_val_fraction);
  o.pack_documents = absl::GetFlag(FLAGS_pack_documents);
  o.eval_every = absl::GetFlag(FLAGS_eval_every);
  o.eval_batches = absl::GetFlag(FLAGS_eval_batches);
  o.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  o.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  o.keep_last = absl::GetFlag(FLAGS_keep_last);
  o.resume = absl::GetFlag(FLAGS_resume);
  o.auto_resume = absl::GetFlag(FLAGS_auto_resume);
  o.init_from = absl::GetFlag(FLAGS_init_from);
  o.init_allow_missing_index = absl::GetFlag(FLAGS_init_allow_missing_index);
  o.metrics_jsonl = absl::GetFlag(FLAGS_metrics_jsonl);
  o.exit_after_step = absl::GetFlag(FLAGS_exit_after_step);
  to_int("tp", absl::GetFlag(FLAGS_tp), o.tp);
  to_int("cp", absl::GetFlag(FLAGS_cp), o.cp);
  o.cp_layout = absl::GetFlag(FLAGS_cp_layout);
  o.zero1 = absl::GetFlag(FLAGS_zero1);
  to_int("gpu", absl::GetFlag(FLAGS_gpu), o.gpu);
  o.bucket_mb = absl::GetFlag(FLAGS_bucket_mb);
  o.recompute = absl::GetFlag(FLAGS_recompute);
  o.deterministic = absl::GetFlag(FLAGS_deterministic);
  o.memory_check = !absl::GetFlag(FLAGS_skip_memory_check);
  o.dense_attention_steps = absl::GetFlag(FLAGS_dense_attention_steps);
  o.dense_attention_fraction = absl::GetFlag(FLAGS_dense_attention_fraction);
  o.optimizer.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.optimizer.beta1 = absl::GetFlag(FLAGS_beta1);
  o.optimizer.beta2 = absl::GetFlag(FLAGS_beta2);
  o.optimizer.eps = absl::GetFlag(FLAGS_adam_eps);
  o.optimizer.grad_clip = absl::GetFlag(FLAGS_grad_clip);

  MPI_Init(&argc, &argv);
  // Every rank parsed the same flags, so a bad value fails on all of them alike.
  absl::Status status = flags_status.ok() ? msa::run_train_program(o) : flags_status;
  if (!status.ok()) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) std::fprintf(stderr, "msa-train: %s\n", std::string(status.message()).c_str());
    // Flag errors are detected on every rank alike (validation happens before any collective),
    // and a setup step that fails on some ranks only is agreed on before the next collective
    // (agree_across_ranks: such a rank prints its own message), so all ranks leave together.
    MPI_Finalize();
    return 1;
  }
  MPI_Finalize();
  return 0;
}
