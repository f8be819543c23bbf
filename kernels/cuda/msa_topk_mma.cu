// Index scoring fused with exp-free top-k on tensor cores, for bf16 index vectors (what training
// on the GPU uses). The f32 path keeps the CUDA-core kernel of msa_kernels.cu, whose arithmetic is
// the CPU reference's bit for bit.
//
// Why tensor cores: at long context the scoring is T x n_b / 2 dot products of length d_I per KV
// group (4.4 TFLOP at 1M tokens, G 8, d_I 64); on CUDA cores, with one shared-memory load per
// multiply-add, it was the largest part of the MSA forward (353 ms at 512K on an H100). Here a
// warp scores 16 queries against 8 block keys per mma (A = the queries' index vectors, kept in
// registers for the whole scan; B = block keys staged in shared memory by cp.async, double
// buffered, shared by the CTA's 8 warps = 128 queries).
//
// Selection without a T x n_b score matrix: an mma's C fragment gives each thread 2 rows x 2
// blocks of every 8-block tile, so each thread keeps, per row, the best KL = topk - 1 of the
// blocks it sees, sorted, in registers (static indices: an insertion is a fixed chain of
// compare-and-swap selects, taken only when a score beats the list's last entry, which after the
// first few hundred blocks is rare; a bound shared by the row's 4 threads raises the bar faster).
// Candidates that pass the bar are queued in shared memory and inserted in batches, when some
// lane's queue is nearly full or the scan ends: an insertion taken by one lane stalls its whole
// warp, and 16 rows per warp took one on most tiles (5-6x the scoring itself at 1M tokens).
// The 4 threads of a row then merge their lists by KL rounds
// of a quad-wide argmax. Ties go to the lower block index at every step (`better`), so the result
// is the exact top-(k-1) under (score descending, index ascending), as specified; with
// integer-valued inputs the scores are exact and the selection equals the CPU's bit for bit.
#include <cmath>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/msa_cuda.h"

namespace msa::cuda {
namespace {

constexpr int kTopkMmaWarps = 8;
constexpr int kQueriesPerCta = kTopkMmaWarps * 16;
constexpr int kChunkBlocks = 64;  // block keys per shared-memory stage
constexpr int kQueue = 12;        // queued candidates per thread and row (6: ~3% slower)

__device__ __forceinline__ bool better(float sa, int ia, float sb, int ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// The best (worst = false) or the worst (worst = true) (score, index) pair of a quad's 4 threads.
__device__ __forceinline__ void quad_pick(float& s, int& i, bool worst) {
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    const float os = __shfl_xor_sync(0xffffffffu, s, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (worst ? better(s, i, os, oi) : better(os, oi, s, i)) {
      s = os;
      i = oi;
    }
  }
}

// Puts (s, j) into the sorted list in place of its last entry, then bubbles it up.
template <int KL>
__device__ __forceinline__ void list_insert(float (&ls)[KL], int (&li)[KL], float s, int j) {
  ls[KL - 1] = s;
  li[KL - 1] = j;
#pragma unroll
  for (int p = KL - 1; p > 0; --p) {
    const bool up = better(ls[p], li[p], ls[p - 1], li[p - 1]);
    const float a = ls[p - 1], b = ls[p];
    const int ia = li[p - 1], ib = li[p];
    ls[p - 1] = up ? b : a;
    ls[p] = up ? a : b;
    li[p - 1] = up ? ib : ia;
    li[p] = up ? ia : ib;
  }
}

template <int DI>
struct TopkSmem {
  static constexpr size_t kKeyBytes = size_t(2) * kChunkBlocks * (DI + 8) * sizeof(bf16);
  static constexpr size_t kBytes = kKeyBytes + size_t(2) * kQueue * kTopkMmaWarps * 32 * 8;
};

template <int DI, int KL>
__global__ void __launch_bounds__(kTopkMmaWarps * 32)
    topk_mma_kernel(const bf16* __restrict__ iq, const bf16* __restrict__ kbar,
                    int32_t* __restrict__ indices, int32_t* __restrict__ counts, int64_t S,
                    int64_t G, int64_t B, int K, int64_t nb) {
  constexpr int kLd = DI + 8;  // padded rows: conflict-free ldmatrix
  extern __shared__ __align__(16) unsigned char topk_smem[];
  // Two stages of block keys, then [row h][slot][thread] (score, block) of queued candidates.
  auto kb_s = reinterpret_cast<bf16(*)[kChunkBlocks * kLd]>(topk_smem);
  auto queue_s = reinterpret_cast<float2(*)[kQueue][kTopkMmaWarps * 32]>(
      topk_smem + TopkSmem<DI>::kKeyBytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane >> 2, tig = lane & 3;
  const int64_t g = blockIdx.y, b = blockIdx.z;
  // Late queries scan the most blocks: launch them first.
  const int64_t cta = gridDim.x - 1 - blockIdx.x;
  const int64_t t_cta = cta * kQueriesPerCta, t_warp = t_cta + warp * 16;

  int64_t c_row[2];
  uint32_t qa[DI / 16][4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t t = t_warp + grp + 8 * h;
    const bool active = t < S;
    c_row[h] = active ? t / B : 0;
    const bf16* qrow = iq + ((b * S + (active ? t : 0)) * G + g) * DI;
#pragma unroll
    for (int ks = 0; ks < DI / 16; ++ks) {
      qa[ks][h] = active ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + 2 * tig) : 0u;
      qa[ks][2 + h] =
          active ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + 8 + 2 * tig) : 0u;
    }
  }
  const int64_t c_warp = t_warp < S ? min(S - 1, t_warp + 15) / B : 0;  // j < c_warp
  const int64_t c_cta = min(S - 1, t_cta + kQueriesPerCta - 1) / B;

  float ls[2][KL];
  int li[2][KL];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int p = 0; p < KL; ++p) {
      ls[h][p] = -INFINITY;
      li[h][p] = INT_MAX;
    }

  constexpr int kPieces = kChunkBlocks * DI / 8;  // 16-byte pieces per stage
  auto stage = [&](int64_t j0, int buf) {
    for (int i = threadIdx.x; i < kPieces; i += blockDim.x) {
      const int jj = i / (DI / 8), col = (i % (DI / 8)) * 8;
      const int64_t j = j0 + jj;
      const bool valid = j < nb;
      cp_async_16(&kb_s[buf][jj * kLd + col],
                  kbar + ((b * nb + (valid ? j : 0)) * G + g) * DI + col, valid);
    }
    cp_async_commit();
  };

  // Admission threshold per row: a candidate must beat the thread's own last entry and the
  // quad's bound: the worst over the 4 threads of their kQuadDepth-th best, below which at least
  // 4 * kQuadDepth >= KL + 1 entries of the row already lie, so nothing there can be selected.
  // It rises about 4x faster than a thread's own last entry: fewer (divergent) insertions.
  constexpr int kQuadDepth = (KL + 1 + 3) / 4;
  float thr_s[2] = {-INFINITY, -INFINITY};
  int thr_i[2] = {INT_MAX, INT_MAX};
  float quad_s[2] = {-INFINITY, -INFINITY};
  int quad_i[2] = {INT_MAX, INT_MAX};

  // Raises row h's bar to the tighter of its own last entry and the quad bound.
  auto refresh_bar = [&](int h) {
    const bool quad_tighter = better(quad_s[h], quad_i[h], ls[h][KL - 1], li[h][KL - 1]);
    thr_s[h] = quad_tighter ? quad_s[h] : ls[h][KL - 1];
    thr_i[h] = quad_tighter ? quad_i[h] : li[h][KL - 1];
  };
  // Called by the whole warp (quad shuffles): inserts the queued candidates that still pass the
  // bar, then recomputes the quad bound.
  int queued[2] = {0, 0};
  auto drain = [&]() {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      for (int i = 0; i < queued[h]; ++i) {
        const float2 e = queue_s[h][i][threadIdx.x];
        const int j = __float_as_int(e.y);
        if (better(e.x, j, thr_s[h], thr_i[h])) {
          if (h == 0)
            list_insert<KL>(ls[0], li[0], e.x, j);
          else
            list_insert<KL>(ls[1], li[1], e.x, j);
          refresh_bar(h);
        }
      }
      queued[h] = 0;
      float ws = ls[h][kQuadDepth - 1];
      int wi = li[h][kQuadDepth - 1];
      quad_pick(ws, wi, /*worst=*/true);
      quad_s[h] = ws;
      quad_i[h] = wi;
      refresh_bar(h);
    }
  };

  const int64_t n_chunks = (c_cta + kChunkBlocks - 1) / kChunkBlocks;
  if (n_chunks > 0) stage(0, 0);
  const int l16 = lane % 16;
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int buf = static_cast<int>(ch & 1);
    if (ch + 1 < n_chunks) {
      stage((ch + 1) * kChunkBlocks, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int64_t j0 = ch * kChunkBlocks;
#pragma unroll 2
    for (int nt = 0; nt < kChunkBlocks / 8; ++nt) {
      const int64_t jt = j0 + nt * 8;
      if (jt >= c_warp) break;  // warp-uniform
      float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int ks = 0; ks < DI / 16; ++ks) {
        uint32_t b0, b1;
        ldmatrix_x2(b0, b1, &kb_s[buf][(nt * 8 + l16 % 8) * kLd + ks * 16 + (l16 / 8) * 8]);
        mma_bf16(sc, qa[ks], b0, b1);
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int h = c / 2;
        const int j = static_cast<int>(jt) + 2 * tig + (c & 1);
        // Empty list slots hold (-inf, INT_MAX), which every real block beats, -inf scores
        // included; NaN scores count as -inf. So each eligible block can be chosen and no
        // sentinel index ever reaches the output, whatever the index branch produced.
        const float score = sc[c] != sc[c] ? -INFINITY : sc[c];
        if (j < c_row[h] && better(score, j, thr_s[h], thr_i[h])) {
          queue_s[h][queued[h]][threadIdx.x] = make_float2(score, __int_as_float(j));
          ++queued[h];
        }
      }
      // A tile queues at most 2 per row: drain while every queue still has room for the next.
      if (__any_sync(0xffffffffu, queued[0] > kQueue - 2 || queued[1] > kQueue - 2)) drain();
    }
    drain();
    __syncthreads();  // the buffer is refilled two stages later
  }

  // Merge the quad's four lists per row, then write the selection in ascending block order.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t t = t_warp + grp + 8 * h;
    const int want = static_cast<int>(min(static_cast<int64_t>(K - 1), c_row[h]));
    int chosen[KL];
#pragma unroll
    for (int rnd = 0; rnd < KL; ++rnd) {
      float bs = ls[h][0];
      int bi = li[h][0];
      quad_pick(bs, bi, /*worst=*/false);
      chosen[rnd] = bi;
      if (bi != INT_MAX && li[h][0] == bi) {  // block indices are unique: one thread pops
#pragma unroll
        for (int p = 0; p + 1 < KL; ++p) {
          ls[h][p] = ls[h][p + 1];
          li[h][p] = li[h][p + 1];
        }
        ls[h][KL - 1] = -INFINITY;
        li[h][KL - 1] = INT_MAX;
      }
    }
    if (t >= S) continue;
    int32_t* out = indices + ((b * S + t) * G + g) * K;
#pragma unroll
    for (int a = 0; a < KL; ++a) {
      if (a >= want || (a & 3) != tig) continue;
      int rank = 0;
#pragma unroll
      for (int o = 0; o < KL; ++o) rank += (o < want && chosen[o] < chosen[a]) ? 1 : 0;
      out[rank] = chosen[a];
    }
    if (tig == 0) {
      out[want] = static_cast<int32_t>(c_row[h]);
      for (int a = want + 1; a < K; ++a) out[a] = -1;
      counts[(b * S + t) * G + g] = want + 1;
    }
  }
}

template <int DI>
void launch_topk_mma(const Tensor& iq, const Tensor& kbar, Tensor& indices, Tensor& counts,
                     const cpu::MsaDims& d) {
  const dim3 grid(static_cast<unsigned>((d.seq + kQueriesPerCta - 1) / kQueriesPerCta),
                  static_cast<unsigned>(d.groups), static_cast<unsigned>(d.batch));
  auto go = [&](auto kernel) {
    constexpr size_t smem = TopkSmem<DI>::kBytes;
    if (smem > 48 * 1024)
      MSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    kernel<<<grid, kTopkMmaWarps * 32, smem>>>(iq.data<bf16>(), kbar.data<bf16>(),
                                         indices.data<int32_t>(), counts.data<int32_t>(), d.seq,
                                         d.groups, d.block_size, static_cast<int>(d.topk),
                                         d.num_blocks());
    MSA_CUDA_CHECK_LAUNCH("topk_mma_kernel");
  };
  if (d.topk <= 16)
    go(topk_mma_kernel<DI, 15>);
  else
    go(topk_mma_kernel<DI, 31>);
}

}  // namespace

bool topk_mma_supported(const Tensor& iq, const cpu::MsaDims& d) {
  const char* force = std::getenv("MSA_TOPK");
  if (force != nullptr && std::string_view(force) == "reference") return false;
  return iq.dtype() == DType::kBF16 && d.topk >= 1 && d.topk <= 32 &&
         (d.index_dim == 16 || d.index_dim == 32 || d.index_dim == 64 || d.index_dim == 128);
}

void topk_mma(const Tensor& iq, const Tensor& kbar, Tensor& indices, Tensor& counts,
              const cpu::MsaDims& d) {
  switch (d.index_dim) {
    case 16: return launch_topk_mma<16>(iq, kbar, indices, counts, d);
    case 32: return launch_topk_mma<32>(iq, kbar, indices, counts, d);
    case 64: return launch_topk_mma<64>(iq, kbar, indices, counts, d);
    default: return launch_topk_mma<128>(iq, kbar, indices, counts, d);
  }
}

}  // namespace msa::cuda
