#include "model/context_parallel.h"

#include "absl/strings/str_format.h"
#include "core/check.h"

namespace msa {
namespace {

// [batch, n, ...] -> (batch, n, the elements of one token).
struct TokenLayout {
  int64_t batch, n, row;
};
TokenLayout token_layout(const Tensor& t, const char* op) {
  MSA_CHECK(t.ndim() >= 2, "%s: %s must be [batch, tokens, ...]", op, t.describe());
  const int64_t batch = t.size(0), n = t.size(1);
  return {batch, n, batch * n > 0 ? t.numel() / (batch * n) : 0};
}

// The all-gathered layout [cp, batch, n, row] (rank-major) against the keys [batch, key_len, row]
// in position order: fn(gathered row, key row, tokens) for each piece of each rank's chunks that
// lies below key_len (chunks tile the sequence: each is wholly inside or outside). Rows are the
// tokens of the two tensors flattened over batch.
template <class Fn>
void for_each_key_piece(const ContextParallel& cp, int64_t batch, int64_t n, int64_t key_len,
                        Fn fn) {
  for (int r = 0; r < cp.size; ++r) {
    int64_t first = 0;  // the chunk's first local token on rank r
    for (const TokenChunk& c : cp_token_chunks(r, cp.size, cp.zigzag, n)) {
      if (c.end() <= key_len)
        for (int64_t b = 0; b < batch; ++b)
          fn((r * batch + b) * n + first, b * key_len + c.position, c.length);
      first += c.length;
    }
  }
}

// Rows [from, from + len) of src into rows [to, to + len) of dst (either device).
void copy_rows(const Tensor& src, int64_t from, Tensor& dst, int64_t to, int64_t len) {
  Tensor piece = dst.slice0(to, to + len);
  piece.copy_from(src.slice0(from, from + len));
}

}  // namespace

std::vector<TokenChunk> cp_token_chunks(int rank, int size, bool zigzag, int64_t local_T) {
  if (!zigzag || size <= 1) return {{rank * local_T, local_T}};
  const int64_t h = local_T / 2;
  MSA_CHECK(2 * h == local_T, "zig-zag context parallelism: %d tokens per rank is odd", local_T);
  return {{rank * h, h}, {(2 * size - 1 - rank) * h, h}};
}

ContextParallel context_parallel_of(Communicator* comm, bool zigzag) {
  ContextParallel cp;
  if (comm == nullptr) return cp;
  cp.comm = comm;
  cp.rank = comm->rank();
  cp.size = comm->size();
  cp.zigzag = zigzag;
  return cp;
}

absl::Status check_context_parallel(const ModelConfig& config, int cp, int64_t seq_len,
                                    bool zigzag) {
  if (cp < 1) return absl::InvalidArgumentError(absl::StrFormat("invalid --cp: %d < 1", cp));
  const bool halves = zigzag && cp > 1;  // each rank holds two chunks
  const int parts = halves ? 2 * cp : cp;
  const char* what = halves ? "(2 x --cp)" : "--cp";
  if (seq_len % parts != 0)
    return absl::InvalidArgumentError(
        halves
            ? absl::StrFormat("invalid --cp: --seq_len %d is not a multiple of 2 x --cp = %d "
                              "(--cp_layout=zigzag: each rank holds two chunks of seq_len / 2 cp "
                              "tokens; --cp_layout=contiguous needs a multiple of --cp only)",
                              seq_len, parts)
            : absl::StrFormat("invalid --cp: --seq_len %d is not a multiple of --cp %d (each rank "
                              "holds seq_len / cp tokens)",
                              seq_len, cp));
  // One rank holds the whole sequence: a partial last block is fine (n_b = ceil(T / B)).
  if (cp > 1 && config.any_msa() && (seq_len / parts) % config.msa.block_size != 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid --cp: --seq_len / %s = %d / %d = %d tokens per %s is not a multiple of the MSA "
        "block size %d (a shard must hold whole blocks%s)",
        what, seq_len, parts, seq_len / parts, halves ? "half-shard" : "rank",
        config.msa.block_size,
        halves ? "; --cp_layout=contiguous holds one chunk of seq_len / cp per rank" : ""));
  return absl::OkStatus();
}

Tensor cp_gather_keys(const ContextParallel& cp, const Tensor& local) {
  if (!cp.enabled()) return local;
  const TokenLayout l = token_layout(local, "cp_gather_keys");
  const Device dev = local.device();
  Tensor all = Tensor::empty({cp.size * local.numel()}, local.dtype(), dev);
  cp.comm->all_gather(local.view({local.numel()}), all);
  // all: [cp, batch, n, row] (rank-major) -> out: [batch, key_len, row] in position order.
  const int64_t key_len = cp.key_len(l.n);
  Shape shape = local.shape();
  shape[1] = key_len;
  // Contiguous shards of one sequence (the long-context case): the first rank + 1 shards are the
  // output already.
  if (l.batch == 1 && !cp.zigzag) return all.slice0(0, key_len * l.row).view(shape);
  Tensor out = Tensor::empty(shape, local.dtype(), dev);
  const Tensor src = all.view({cp.size * l.batch * l.n, l.row});
  Tensor dst = out.view({l.batch * key_len, l.row});
  for_each_key_piece(cp, l.batch, l.n, key_len, [&](int64_t from, int64_t to, int64_t len) {
    copy_rows(src, from, dst, to, len);
  });
  return out;
}

Tensor cp_reduce_scatter_keys(const ContextParallel& cp, const Tensor& grad) {
  if (!cp.enabled()) return grad;
  const TokenLayout l = token_layout(grad, "cp_reduce_scatter_keys");
  // The local tokens per row whose key_len is grad's: key_len = (rank + 1) n contiguous,
  // (2 size - rank) n / 2 zig-zag.
  const int64_t parts = cp.zigzag ? 2 * cp.size - cp.rank : cp.rank + 1;
  const int64_t n = (cp.zigzag ? 2 : 1) * (l.n / parts);
  MSA_CHECK(n > 0 && cp.key_len(n) == l.n,
            "cp_reduce_scatter_keys: %s is not the keys of cp rank %d of %d", grad.describe(),
            cp.rank, cp.size);
  const Device dev = grad.device();
  // bf16 gradients (CUDA) are summed in f32: each rank's part was rounded once already.
  const DType sum_dtype = grad.dtype() == DType::kBF16 ? DType::kF32 : grad.dtype();
  const Tensor g = grad.dtype() == sum_dtype ? grad : grad.to(sum_dtype);
  // grad: [batch, key_len, row] -> send: [cp, batch, n, row], rank r's chunks where they lie in
  // the keys, zero past them (this rank's queries see none of those keys).
  const int64_t local_numel = l.batch * n * l.row;
  Tensor send = Tensor::zeros({cp.size * local_numel}, sum_dtype, dev);
  if (l.batch == 1 && !cp.zigzag) {
    Tensor head = send.slice0(0, l.n * l.row);
    head.copy_from(g.view({l.n * l.row}));
  } else {
    const Tensor src = g.view({l.batch * l.n, l.row});
    Tensor dst = send.view({cp.size * l.batch * n, l.row});
    for_each_key_piece(cp, l.batch, n, l.n, [&](int64_t to, int64_t from, int64_t len) {
      copy_rows(src, from, dst, to, len);
    });
  }
  Shape shape = grad.shape();
  shape[1] = n;
  Tensor out = Tensor::empty(shape, sum_dtype, dev);
  Tensor flat = out.view({local_numel});
  cp.comm->reduce_scatter_sum(send, flat);
  return out.dtype() == grad.dtype() ? out : out.to(grad.dtype());
}

}  // namespace msa
