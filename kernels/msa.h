// MiniMax Sparse Attention (DESIGN.md section 4): token-level index scoring max-pooled per block
// with exp-free top-k, block-sparse causal GQA attention, and the token-level index distillation
// loss.
//
// Notation: B block size, n_b = ceil(T / B) blocks, block j covers tokens [jB, min((j+1)B, T)),
// query t lies in block c(t) = t / B. G KV groups, H query heads (r = H / G per group), d_I index
// dim. Index tensors: iq [batch, T, G, d_I] (one index query head per KV group), ik [batch, T,
// d_I] (one index key head shared by all groups).
//
// Fewer queries than keys (CPU and CUDA; context parallelism, and packed documents under it):
// every function below also takes query tensors (q, iq, out, lse, the selection, diq) of Tq tokens
// with key tensors (k, v, ik, dk, dv, dik) of Tk >= Tq tokens (any offset Tk - Tq). Query i then
// sits at position t = Tk - Tq + i (bottom-right causal alignment) and is computed exactly as row
// t of the full computation: keys s <= t, local block c(t) = t / B, blocks counted over the key
// positions from 0. Key gradients (dk, dv, dik) then hold these queries' contributions only;
// summed over the query shards of a sequence they are the full gradients. The index loss counts
// this call's Tq rows (n_rows = batch Tq G).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace msa {

inline int64_t msa_num_blocks(int64_t T, int64_t block_size) {
  return (T + block_size - 1) / block_size;
}

// Buffers the GPU kernels derive from a selection's indices and counts (the KV-outer work lists:
// the selection inverted, per KV group and block, the query rows that chose it) and reuse while
// the selection is unchanged: a step's forward, its recomputation and its backward read the same
// lists. Keys are the deriving kernel's own (source pointers, sizes, ordering); an entry keeps
// its source tensors alive, so a key's pointers cannot be reused for other data while it exists.
class SelectionCache {
 public:
  // The buffers stored under key, or null.
  const std::vector<Tensor>* find(const std::vector<int64_t>& key) const;
  // `sources`: the tensors the buffers were derived from, held (not counted) while the entry lives.
  void put(std::vector<int64_t> key, std::vector<Tensor> buffers, std::vector<Tensor> sources);
  void clear() { entries_.clear(); }
  int64_t bytes() const;  // device or host memory of the entries' buffers, sources excluded

 private:
  struct Entry {
    std::vector<Tensor> buffers, sources;
  };
  std::map<std::vector<int64_t>, Entry> entries_;
};

// The blocks each (sequence, query token, KV group) row attends to.
struct BlockSelection {
  int block_size = 128;
  int topk = 16;
  // i32 [batch, T, G, topk]: the first counts[b, t, g] entries hold the selected block indices in
  // ascending order (so the local block c(t) is the last of them); the rest are -1.
  Tensor indices;
  // i32 [batch, T, G]: min(topk, c(t) + 1).
  Tensor counts;
  // What the GPU kernels derived from indices and counts (null: nothing is kept). Copies share it
  // (they share indices and counts too); msa_index_topk, which rewrites them, clears it. Code
  // that writes indices or counts any other way must clear it too.
  std::shared_ptr<SelectionCache> cache = std::make_shared<SelectionCache>();

  // Allocates indices and counts for the given sizes on `device`.
  static BlockSelection allocate(int64_t batch, int64_t T, int64_t G, int block_size, int topk,
                                 Device device);
};

// Exp-free top-k over max-pooled token scores. Token score S_{t,g,s} = iq_{t,g} . ik_s /
// sqrt(d_I) for s <= t; block score M_{t,g,j} = max over the tokens s <= t of block j of S.
// Selects c(t) plus the top-(topk - 1) blocks j < c(t) by M, ties to the lower block index (all
// of them when fewer exist). iq [batch, T, G, d_I], ik [batch, T, d_I] (one index key head shared
// by the groups). sel must be allocated with matching sizes.
// CPU: f32 or f64. CUDA: bf16 (tensor cores) or f32 inputs, scores accumulated in f32.
void msa_index_topk(const Tensor& iq, const Tensor& ik, BlockSelection& sel);

// Causal attention of every query head over the keys of its group's selected blocks only (causal
// mask inside the local block), scale `scale`. Shapes as in kernels/attention.h.
void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const BlockSelection& sel, double scale, Tensor& out,
                                  Tensor& lse);
// dq, dk, dv overwritten. The selection is treated as a constant.
void msa_sparse_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const BlockSelection& sel, double scale, Tensor& dq, Tensor& dk,
                                   Tensor& dv);

enum class IndexLossMode {
  // Support U_{t,g} = every token s <= t of the selected blocks (the local block included);
  // teacher from the sparse main branch (its q, k and lse).
  kSparse,
  // Warm-up: U_{t,g} = every token s <= t; teacher from dense attention (q, k and the dense lse).
  // sel is not used (may be default-constructed).
  kDenseTarget,
};

struct IndexLossResult {
  double loss = 0;     // mean KL(P || Q) over the rows: (1 / (batch T G)) sum over (b, t, g)
  int64_t n_rows = 0;  // rows counted: batch * T * G (every query token and group)
};

// Token-level index distillation loss (DESIGN.md section 4). For each row (b, t, g):
//   teacher P_s = (1/r) sum_{h in g} exp(scale q_{t,h}.k_s - lse_{t,h}), s in U (a constant: no
//   gradient reaches q, k), student Q = softmax over s in U of S_{t,g,s} = iq_{t,g}.ik_s/sqrt(d_I),
//   KL(P || Q) = sum_s P_s (log P_s - log Q_s).
// Writes (overwrites) the gradients of weight * loss: diq [batch, T, G, d_I] and dik [batch, T,
// d_I], through dS_{t,g,s} = weight (Q_s - P_s) / n_rows on U.
// CPU: every floating tensor f32 or f64 (same dtype). CUDA: q, k, iq, ik bf16, lse f32, diq and
// dik f32.
IndexLossResult msa_index_loss(IndexLossMode mode, const Tensor& q, const Tensor& k,
                               const Tensor& lse, const BlockSelection& sel, const Tensor& iq,
                               const Tensor& ik, double scale, double weight, Tensor& diq,
                               Tensor& dik);

// The query tokens a recall is measured at: (batch row, position t) pairs. Any order; a pair
// given twice counts twice.
struct RecallQuery {
  int64_t batch = 0;
  int64_t t = 0;
};

// The strided recalls' sample: one query per window of `stride` positions, window w's at
// position w * stride + floor(stride * frac(w * 0.6180339887498949)), its phase moving through the
// window by the golden ratio, so that consecutive windows sample every offset within a window (and
// within a block) alike. A stride that is a multiple of the block size once sampled only each
// block's first query, whose local block holds one token: it understated the recalls of layers that
// attend to recent tokens (docs/quality.md). Positions count from the keys' first position: T
// queries at offset `offset` into them (a context-parallel shard or a document's later chunk)
// sample exactly the positions of the whole sequence's sample that fall among them, returned as
// t - offset. stride <= 1 samples every query.
int64_t strided_recall_position(int64_t window, int64_t stride);
// The largest stride whose sample of T >= 2 queries holds more than position 0 (its second
// window starts inside the sequence): about T / 1.618.
int64_t max_recall_stride(int64_t T);
// (b, t) for every batch row b and every sampled t in [0, T), in increasing t.
std::vector<RecallQuery> strided_recall_queries(int64_t batch, int64_t T, int64_t query_stride,
                                                int64_t offset = 0);
// How many of T queries at `offset` the sample holds (per batch row).
int64_t strided_recall_count(int64_t T, int64_t query_stride, int64_t offset = 0);
// The stride to sample sequences of T tokens at: `requested`, raised so that a measurement scores
// at most kRecallPairsPerSequence (CPU) or kGpuRecallPairsPerSequence (tensors on `device`
// kCUDA) (sampled query, key) pairs per sequence and layer. The measures below cost T^2 / stride
// per sequence and head over each sampled query's dense attention. On the CPU (f64: host tensors,
// and sizes the GPU kernel does not take) the GPU-sized quality model (2048 tokens, every 16th
// query: 2^18 pairs) measures in about half a second on an H100 host, while every 16th query of
// 128K tokens would take a ~1B model tens of minutes; the GPU's budget (docs/perf.md) keeps every
// 16th query up to 16K tokens. msa-train and msa-eval sample at this stride and say when they
// raised it. `keys` (default T): the keys each query may see, when it exceeds the T queries (a
// context-parallel rank's shard of T tokens sees up to cp T keys: the bound counts T keys /
// stride).
constexpr int64_t kRecallPairsPerSequence = int64_t(1) << 22;
constexpr int64_t kGpuRecallPairsPerSequence = int64_t(1) << 28;
int64_t bounded_recall_stride(int64_t T, int64_t requested, Device device = Device::kCPU,
                              int64_t keys = -1);

// Index recall: mean over the sampled queries t (strided_recall_queries, at the queries' offset
// into the keys: Tk - Tq; every batch row) and heads h of the dense causal attention mass that
// falls inside the blocks selected for (t, g(h)).
// 1.0 means the selector keeps all the attention. Any device: device tensors (bf16 q and k) are
// measured on the GPU in f32 (kernels/cuda/msa_recall_cuda.cu), others on the CPU in f64;
// MSA_RECALL=reference forces the CPU. The same holds for every measure below.
double msa_index_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        int64_t query_stride);
// The same mean over the given queries (and every head) instead of a stride: e.g. the answer
// positions of a retrieval task, whose attention decides the answer. queries must be non-empty,
// each inside [0, batch) x [0, T).
double msa_index_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        const std::vector<RecallQuery>& queries);

// Block recall (the paper's selector metric): for the same sampled (t, g) rows, the main branch's
// own top-k blocks are c(t) plus the top-(topk - 1) earlier blocks by the dense attention mass
// averaged over the group's heads (ties to the lower index); the result is the mean over rows of
// |selected blocks ∩ those blocks| / |those blocks|. 1.0 = the selector picks what the attention
// would. Any device.
double msa_block_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        int64_t query_stride);
// The same mean over the rows (b, t, g) of the given queries (every group), as above.
double msa_block_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel, double scale,
                        const std::vector<RecallQuery>& queries);

// Index recall ceiling: for the same sampled (t, g) rows, the dense attention mass (averaged over
// the group's heads) inside the block recall's oracle blocks, averaged over the rows. No k blocks
// shared by a group keep more, so msa_index_recall <= this for every selection, with equality for
// the oracle selection; it depends on q, k and sel's block size and k only (not on its blocks).
// Any device; NaN attention gives NaN.
double msa_index_recall_ceiling(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                                double scale, int64_t query_stride);
double msa_index_recall_ceiling(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                                double scale, const std::vector<RecallQuery>& queries);

// The three measures from one pass over the dense attention (what the model logs; each function
// above makes that pass for its one measure), and a fourth: the max-pool ceiling, the index recall
// of the paper's selection rule (c(t) plus the top-(k - 1) earlier blocks by their largest token
// score) fed perfect token scores, the group's mean attention log-probabilities (what the KL
// distills the index scores towards). index recall <= ceiling always; max-pool ceiling <= ceiling
// too, and the index recall falls below the max-pool ceiling by what the indexer has not learned.
struct OracleRecall {
  double index_recall = 0;
  double block_recall = 0;
  double index_recall_ceiling = 0;
  double max_pool_recall_ceiling = 0;
  // The (query, group) rows the means are over: the weight that combines recalls measured apart
  // (documents, context-parallel shards, data-parallel ranks). 0 when nothing was sampled (the
  // recalls are then 1.0 and weigh nothing).
  int64_t rows = 0;
};
OracleRecall msa_oracle_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                               double scale, int64_t query_stride);
OracleRecall msa_oracle_recall(const Tensor& q, const Tensor& k, const BlockSelection& sel,
                               double scale, const std::vector<RecallQuery>& queries);

// Key-block hit rate: the fraction of rows (queries[i], g), over every group g, whose selected
// blocks include the block of key_positions[i] (a position on the same sequence, <= the query's;
// e.g. the fact an answer position of a retrieval task asks about). 1.0 = the selector always
// picks the block that holds what the query needs. queries and key_positions have the same,
// non-zero length. Any device (computed on the CPU).
double msa_selected_key_fraction(const BlockSelection& sel, const std::vector<RecallQuery>& queries,
                                 const std::vector<int64_t>& key_positions);

}  // namespace msa
