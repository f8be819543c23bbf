// msa-bench msa: the MSA kernels (the indexer: q^I k^I token scores max-pooled per block with the
// exp-free top-k; sparse attention forward and backward; the token-level index distillation loss
// with its gradients) against cuDNN's dense causal flash attention on the same Q/K/V, measured
// side by side in one run. Effective TFLOP/s count only the keys of the selected blocks (causal
// part of the local block included) for MSA, the causal half of the T x T scores for cuDNN, and
// for the indexer its q^I k^I products over the blocks before each query's own (G d_I 2 per
// query and key); the backward counts 2.5x the forward (five matrix products instead of two).
#if MSA_HAS_CUDA
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "core/deterministic.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/msa.h"
#include "launch/bench/bench.h"
#include "launch/bench/device_inputs.h"
#include "launch/bench/flags.h"
#include "launch/bench/timing.h"
#include "model/context_parallel.h"

namespace msa::bench {
namespace {

// Keys attended by all (sequence, query, group) rows of the selection: sum over selected blocks
// of the keys of the block at or before the query.
double selected_keys(const BlockSelection& sel, int64_t T, int64_t G, int B, int K) {
  const Tensor idx = sel.indices.to(Device::kCPU), cnt = sel.counts.to(Device::kCPU);
  const int32_t* ip = idx.data<int32_t>();
  const int32_t* cp = cnt.data<int32_t>();
  double keys = 0;
  for (int64_t bt = 0; bt < idx.size(0) * T; ++bt)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t t = bt % T, row = bt * G + g;
      for (int i = 0; i < cp[row]; ++i) {
        const int64_t j = ip[row * K + i];
        keys += static_cast<double>(std::min<int64_t>((j + 1) * B, t + 1) - j * B);
      }
    }
  return keys;
}

// Rows [begin, end) of a [1, T, ...] tensor as [1, end - begin, ...].
Tensor token_rows(const Tensor& t, int64_t begin, int64_t end) {
  Shape shape = t.shape();
  const int64_t inner = t.numel() / t.size(1);
  shape[1] = end - begin;
  return t.view({t.size(1), inner}).slice0(begin, end).view(shape);
}

// Context parallelism's compute per rank: rank c of C runs the MSA layer (indexer, attention
// forward, index loss, attention backward) and cuDNN's dense attention (forward + backward) for
// its T / C queries over the keys [0, (c + 1) T / C). MSA's attention costs the same per query
// wherever it sits (k blocks); its indexer and dense attention grow with the position, so the
// last rank is the slowest: the compute bound on cp's scaling efficiency is the whole sequence's
// time / C over the slowest rank's. The zig-zag layout gives each rank an early and a late chunk.
void print_cp_shards(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& iq,
                     const Tensor& ik, const Tensor& dout, int C, bool zigzag, int B, int K,
                     int iters, bool with_cudnn, double whole_msa, double whole_cudnn) {
  const int64_t T = q.size(1), n = T / C, H = q.size(2), G = k.size(2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  double slowest_msa = 0, slowest_cudnn = 0;
  for (int c = 0; c < C; ++c) {
    // A rank's chunks (two with zig-zag) each run over the keys up to their end.
    double indexer = 0, fwd = 0, kl = 0, bwd = 0, cudnn = with_cudnn ? 0 : NAN;
    std::string where;
    for (const TokenChunk& chunk : cp_token_chunks(c, C, zigzag, n)) {
      const int64_t m = chunk.length, end = chunk.end();
      where += absl::StrFormat(" [%lld, %lld)", static_cast<long long>(chunk.position),
                               static_cast<long long>(end));
      const Tensor qs = token_rows(q, chunk.position, end),
                   iqs = token_rows(iq, chunk.position, end),
                   douts = token_rows(dout, chunk.position, end);
      const Tensor ks = token_rows(k, 0, end), vs = token_rows(v, 0, end),
                   iks = token_rows(ik, 0, end);
      BlockSelection sel = BlockSelection::allocate(1, m, G, B, K, Device::kCUDA);
      Tensor out = Tensor::empty(qs.shape(), DType::kBF16, Device::kCUDA);
      Tensor lse = Tensor::empty({1, H, m}, DType::kF32, Device::kCUDA);
      Tensor diq = Tensor::empty(iqs.shape(), DType::kF32, Device::kCUDA);
      Tensor dik = Tensor::empty(iks.shape(), DType::kF32, Device::kCUDA);
      Tensor dq = Tensor::empty(qs.shape(), DType::kBF16, Device::kCUDA);
      Tensor dk = Tensor::empty(ks.shape(), DType::kBF16, Device::kCUDA);
      Tensor dv = Tensor::empty(vs.shape(), DType::kBF16, Device::kCUDA);
      indexer += median_ms(iters, [&] { msa_index_topk(iqs, iks, sel); });
      // Each timed forward builds its work lists (cleared first), as a training forward does;
      // the backward reuses the last forward's, as training's does (BlockSelection::cache).
      fwd += median_ms(iters, [&] {
        sel.cache->clear();
        msa_sparse_attention_forward(qs, ks, vs, sel, scale, out, lse);
      });
      kl += median_ms(iters, [&] {
        msa_index_loss(IndexLossMode::kSparse, qs, ks, lse, sel, iqs, iks, scale, 1.0, diq, dik);
      });
      bwd += median_ms(iters, [&] {
        msa_sparse_attention_backward(douts, qs, ks, vs, out, lse, sel, scale, dq, dk, dv);
      });
      if (with_cudnn) {
        cudnn += median_ms(iters, [&] { attention_forward(qs, ks, vs, scale, out, lse); }) +
                 median_ms(iters, [&] {
                   attention_backward(douts, qs, ks, vs, out, lse, scale, dq, dk, dv);
                 });
      }
    }
    const double msa = indexer + fwd + kl + bwd;
    slowest_msa = std::max(slowest_msa, msa);
    slowest_cudnn = std::max(slowest_cudnn, cudnn);
    std::printf(
        "  cp rank %d/%d%s: queries%s | %8.2f %8.2f %8.2f %8.2f | MSA f+b %9.2f | "
        "cuDNN f+b %9.2f\n",
        c, C, zigzag ? " zig-zag" : "", where.c_str(), indexer, fwd, kl, bwd, msa, cudnn);
  }
  std::printf(
      "  cp %d%s at %lld: slowest rank MSA %.2f ms (whole / %d = %.2f: compute-bound "
      "efficiency %.0f%%), cuDNN %.2f ms (whole / %d = %.2f: %.0f%%)\n",
      C, zigzag ? " zig-zag" : "", static_cast<long long>(T), slowest_msa, C, whole_msa / C,
      100.0 * whole_msa / C / slowest_msa, slowest_cudnn, C, whole_cudnn / C,
      100.0 * whole_cudnn / C / slowest_cudnn);
  std::fflush(stdout);
}

// --selection=sink: index dim 0 is 8 for every query and +8 for the keys of the first k-1 blocks
// (-8 elsewhere): their token scores lead the others' by 128 (before the 1 / sqrt(d_I) scale;
// the other d_I - 1 N(0, 1) products spread ~sqrt(d_I)), so every query selects them (plus its
// local block): the most skewed work lists.
void steer_to_first_blocks(Tensor& iq, Tensor& ik, int64_t first_keys) {
  Tensor hq = iq.to(Device::kCPU).to(DType::kF32), hk = ik.to(Device::kCPU).to(DType::kF32);
  const int64_t dI = ik.size(2), T = ik.size(1), rows = iq.numel() / dI;
  for (int64_t i = 0; i < rows; ++i) hq.data<float>()[i * dI] = 8.0f;
  for (int64_t bs = 0; bs < ik.size(0) * T; ++bs)
    hk.data<float>()[bs * dI] = bs % T < first_keys ? 8.0f : -8.0f;
  iq.copy_from(hq.to(DType::kBF16).to(Device::kCUDA));
  ik.copy_from(hk.to(DType::kBF16).to(Device::kCUDA));
}

// The share of (query, group) rows past the first k-1 blocks whose selection holds all of them
// (--selection=sink promises 1).
double first_blocks_share(const BlockSelection& sel) {
  const Tensor idx = sel.indices.to(Device::kCPU);
  const int64_t K = sel.topk, T = idx.size(1), rows_per_t = idx.size(2);
  int64_t rows = 0, hits = 0;
  for (int64_t b = 0; b < idx.size(0); ++b)
    for (int64_t t = (K - 1) * sel.block_size; t < T; ++t)
      for (int64_t g = 0; g < rows_per_t; ++g) {
        const int32_t* row = idx.data<int32_t>() + ((b * T + t) * rows_per_t + g) * K;
        ++rows;
        hits += row[K - 2] == K - 2;  // ascending, distinct: blocks 0..K-2 then the local one
      }
  return rows > 0 ? static_cast<double>(hits) / rows : 1.0;
}

}  // namespace

int bench_msa() {
  const int H = absl::GetFlag(FLAGS_heads), G = absl::GetFlag(FLAGS_groups),
            d = absl::GetFlag(FLAGS_head_dim), B = absl::GetFlag(FLAGS_block_size),
            K = absl::GetFlag(FLAGS_topk), dI = absl::GetFlag(FLAGS_index_dim),
            iters = absl::GetFlag(FLAGS_iters);
  const int64_t batch = absl::GetFlag(FLAGS_batch);
  if (batch < 1) {
    std::fprintf(stderr, "msa-bench: --batch must be at least 1, not %lld\n",
                 static_cast<long long>(batch));
    return 2;
  }
  const bool with_cudnn = absl::GetFlag(FLAGS_cudnn);
  const std::string selection = absl::GetFlag(FLAGS_selection);
  if (selection != "random" && selection != "sink") {
    std::fprintf(stderr, "msa-bench: --selection must be 'random' or 'sink', not '%s'\n",
                 selection.c_str());
    return 2;
  }
  const bool sink = selection == "sink";
  std::vector<std::pair<int64_t, bool>> runs;  // (T, with backward)
  for (int64_t T : parse_lengths(absl::GetFlag(FLAGS_seqs), "seqs")) runs.push_back({T, true});
  for (int64_t T : parse_lengths(absl::GetFlag(FLAGS_fwd_only_seqs), "fwd_only_seqs"))
    runs.push_back({T, false});
  std::printf(
      "MSA vs cuDNN dense causal flash attention: H=%d G=%d d=%d B=%d k=%d d_I=%d, bf16, batch "
      "%lld, %s selection; times in ms (median of %d after a warm-up)\n",
      H, G, d, B, K, dI, static_cast<long long>(batch), selection.c_str(), iters);
  if (deterministic())
    std::printf(
        "--deterministic: the dense backward is the fallback kernel's, not cuDNN's (cuDNN's sums "
        "dQ "
        "with f32 atomics), so 'cuDNN f+b' and 'x f+b' compare with it\n");
  std::printf("%8s | %8s %8s %8s %8s | %9s %9s | %9s %9s | %7s %7s | %8s %8s %8s\n", "seq",
              "indexer", "attn-f", "KL", "attn-b", "MSA fwd", "MSA f+b", "cuDNN f", "cuDNN f+b",
              "x fwd", "x f+b", "idx TF/s", "MSA TF/s", "cuDNN TF/s");
  for (const auto& [T, with_bwd] : runs) {
    Tensor q = random_device({batch, T, H, d}, 1), k = random_device({batch, T, G, d}, 2),
           v = random_device({batch, T, G, d}, 3);
    Tensor iq = random_device({batch, T, G, dI}, 4), ik = random_device({batch, T, dI}, 5);
    if (sink) steer_to_first_blocks(iq, ik, static_cast<int64_t>(K - 1) * B);
    BlockSelection sel = BlockSelection::allocate(batch, T, G, B, K, Device::kCUDA);
    Tensor out = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
    Tensor lse = Tensor::empty({batch, H, T}, DType::kF32, Device::kCUDA);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const double indexer = median_ms(iters, [&] { msa_index_topk(iq, ik, sel); });
    // Each timed forward builds its work lists (cleared first), as a training forward does; the
    // backward reuses the last forward's, as training's does (BlockSelection::cache).
    const double fwd = median_ms(iters, [&] {
      sel.cache->clear();
      msa_sparse_attention_forward(q, k, v, sel, scale, out, lse);
    });
    double bwd = NAN, kl = NAN, cudnn_fwd = NAN, cudnn_bwd = NAN;
    Tensor dout, dq, dk, dv;
    if (with_bwd) {
      // The training forward's index loss (KL value and the gradients for W_IQ / W_IK).
      Tensor diq = Tensor::empty(iq.shape(), DType::kF32, Device::kCUDA);
      Tensor dik = Tensor::empty(ik.shape(), DType::kF32, Device::kCUDA);
      kl = median_ms(iters, [&] {
        msa_index_loss(IndexLossMode::kSparse, q, k, lse, sel, iq, ik, scale, 1.0, diq, dik);
      });
      dout = random_device({batch, T, H, d}, 6);
      dq = Tensor::empty(q.shape(), DType::kBF16, Device::kCUDA);
      dk = Tensor::empty(k.shape(), DType::kBF16, Device::kCUDA);
      dv = Tensor::empty(v.shape(), DType::kBF16, Device::kCUDA);
      bwd = median_ms(iters, [&] {
        msa_sparse_attention_backward(dout, q, k, v, out, lse, sel, scale, dq, dk, dv);
      });
    }
    if (sink)
      std::printf("  (sink selection: %.4f of the rows select the first %d blocks)\n",
                  first_blocks_share(sel), K - 1);
    const double keys = selected_keys(sel, T, G, B, K);
    const double msa_flops = 4.0 * d * keys * (H / G);
    const double dense_flops = 4.0 * d * H * batch * (static_cast<double>(T) * (T + 1) / 2);
    if (with_cudnn) {
      cudnn_fwd = median_ms(iters, [&] { attention_forward(q, k, v, scale, out, lse); });
      if (with_bwd)
        cudnn_bwd = median_ms(
            iters, [&] { attention_backward(dout, q, k, v, out, lse, scale, dq, dk, dv); });
    }
    // The indexer scores every key of the blocks before the query's own: sum over t of B c(t).
    double index_keys = 0;
    for (int64_t t = 0; t < T; ++t) index_keys += static_cast<double>((t / B) * B);
    const double index_flops = 2.0 * G * dI * index_keys * batch;
    const double msa_f = indexer + fwd, msa_fb = msa_f + kl + bwd;
    const double cudnn_fb = cudnn_fwd + cudnn_bwd;
    std::printf(
        "%8lld | %8.2f %8.2f %8.2f %8.2f | %9.2f %9.2f | %9.2f %9.2f | %7.2f %7.2f | %8.1f %8.1f "
        "%8.1f\n",
        static_cast<long long>(T), indexer, fwd, kl, bwd, msa_f, msa_fb, cudnn_fwd, cudnn_fb,
        cudnn_fwd / msa_f, cudnn_fb / msa_fb, index_flops / (indexer * 1e-3) / 1e12,
        msa_flops / (fwd * 1e-3) / 1e12, dense_flops / (cudnn_fwd * 1e-3) / 1e12);
    if (with_bwd && absl::GetFlag(FLAGS_warmup_kl)) {
      // The warm-up's index loss: dense attention's lse (cuDNN's, as the warm-up forward
      // computes it) as the teacher's, the KL over the whole causal support.
      Tensor dense_lse = Tensor::empty({batch, H, T}, DType::kF32, Device::kCUDA);
      attention_forward(q, k, v, scale, out, dense_lse);
      Tensor diq = Tensor::empty(iq.shape(), DType::kF32, Device::kCUDA);
      Tensor dik = Tensor::empty(ik.shape(), DType::kF32, Device::kCUDA);
      const double warm = median_ms(iters, [&] {
        msa_index_loss(IndexLossMode::kDenseTarget, q, k, dense_lse, sel, iq, ik, scale, 1.0, diq,
                       dik);
      });
      std::printf("  warm-up index loss (dense target, gradients included) at %lld: %.2f ms\n",
                  static_cast<long long>(T), warm);
    }
    if (const int stride = absl::GetFlag(FLAGS_recall_stride); stride > 0) {
      OracleRecall gpu;
      const double gpu_ms =
          median_ms(iters, [&] { gpu = msa_oracle_recall(q, k, sel, scale, stride); });
      const int64_t n = batch * strided_recall_count(T, stride);
      std::string cpu_ms = "-";
      if (static_cast<double>(n) * T <= static_cast<double>(int64_t(1) << 26)) {
        // The reference reads host copies (made outside the timing, as the GPU's inputs are).
        BlockSelection hsel = sel;
        hsel.indices = sel.indices.to(Device::kCPU);
        hsel.counts = sel.counts.to(Device::kCPU);
        const Tensor hq = q.to(Device::kCPU), hk = k.to(Device::kCPU);
        OracleRecall cpu;
        const auto t0 = std::chrono::steady_clock::now();
        cpu = msa_oracle_recall(hq, hk, hsel, scale, stride);
        cpu_ms = absl::StrFormat(
            "%.1f ms (index recall %.6f vs the GPU's %.6f)",
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count(),
            cpu.index_recall, gpu.index_recall);
      }
      std::printf(
          "  selector measures at every %d-th query (%lld queries x %d groups): GPU %.2f ms; CPU "
          "f64 reference %s\n",
          stride, static_cast<long long>(n), G, gpu_ms, cpu_ms.c_str());
    }
    std::fflush(stdout);
    const int C = absl::GetFlag(FLAGS_cp_shards);
    if (with_bwd && C > 1 && batch == 1 && T % (2 * static_cast<int64_t>(C) * B) == 0)
      for (bool zigzag : {false, true})
        print_cp_shards(q, k, v, iq, ik, dout, C, zigzag, B, K, iters, with_cudnn, msa_fb,
                        cudnn_fb);
  }
  std::printf(
      "MSA fwd = indexer + attn-f; MSA f+b = indexer + attn-f + KL (index loss and its gradients) "
      "+ attn-b. x fwd / x f+b: cuDNN time over MSA time. TF/s: forward; idx = the indexer's "
      "q^I k^I products, MSA the selected keys only, cuDNN the causal half.\n");
  return 0;
}

}  // namespace msa::bench
#endif  // MSA_HAS_CUDA
