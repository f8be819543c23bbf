// make_context_shard_source (train/batch_source.h): each cp rank keeps its shard (contiguous or the
// zig-zag pair of chunks) of the tokens and targets of every sequence its data-parallel replica
// reads (and, for packed documents, the sequence's document starts with the shard's position).
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/check.h"
#include "model/context_parallel.h"
#include "train/batch_source.h"

namespace msa {
namespace {

class ContextShardSource : public BatchSource {
 public:
  ContextShardSource(std::unique_ptr<BatchSource> inner, int cp_rank, int cp_size, bool zigzag)
      : inner_(std::move(inner)), rank_(cp_rank), size_(cp_size), zigzag_(zigzag) {}

  Batch get(int64_t step, int micro) override {
    Batch full = inner_->get(step, micro);
    MSA_CHECK(full.chunks.empty(), "context shard: the inner batch is sharded already");
    Batch b{shard(full.tokens), shard(full.targets), {}, {}};
    // Where this shard's tokens lie, and (packed documents) the whole sequence's starts.
    b.chunks = cp_token_chunks(rank_, size_, zigzag_, b.tokens.size(1));
    b.doc_starts = std::move(full.doc_starts);
    return b;
  }
  int64_t distinct_batches() const override { return inner_->distinct_batches(); }
  std::string data_identity() const override { return inner_->data_identity(); }
  std::string data_metadata() const override { return inner_->data_metadata(); }

  std::string describe() const override {
    return absl::StrFormat("%s, context shard %d of %d%s", inner_->describe(), rank_, size_,
                           zigzag_ ? " (zig-zag)" : "");
  }

 private:
  Tensor shard(const Tensor& t) const {
    const int parts = zigzag_ ? 2 * size_ : size_;
    MSA_CHECK(t.ndim() == 2 && t.dtype() == DType::kI32 && t.size(1) % parts == 0,
              "context shard: batch %s must be i32 [batch, T] with T a multiple of %d",
              t.describe(), parts);
    const int64_t batch = t.size(0), T = t.size(1), n = T / size_;
    Tensor out = Tensor::empty({batch, n}, DType::kI32);
    for (int64_t b = 0; b < batch; ++b) {
      int64_t local = 0;
      for (const TokenChunk& c : cp_token_chunks(rank_, size_, zigzag_, n)) {
        std::memcpy(out.data<int32_t>() + b * n + local, t.data<int32_t>() + b * T + c.position,
                    c.length * sizeof(int32_t));
        local += c.length;
      }
    }
    return out;
  }

  std::unique_ptr<BatchSource> inner_;
  int rank_, size_;
  bool zigzag_;
};

}  // namespace

std::unique_ptr<BatchSource> make_context_shard_source(std::unique_ptr<BatchSource> inner,
                                                       int cp_rank, int cp_size, bool zigzag) {
  if (cp_size == 1) return inner;
  return std::make_unique<ContextShardSource>(std::move(inner), cp_rank, cp_size, zigzag);
}

}  // namespace msa
