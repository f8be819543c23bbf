// make_context_shard_source (train/batch_source.h): each cp rank keeps its contiguous shard of the
// tokens and targets of every sequence its data-parallel replica reads (and, for packed documents,
// the sequence's document starts with the shard's position).
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/check.h"
#include "train/batch_source.h"

namespace msa {
namespace {

class ContextShardSource : public BatchSource {
 public:
  ContextShardSource(std::unique_ptr<BatchSource> inner, int cp_rank, int cp_size)
      : inner_(std::move(inner)), rank_(cp_rank), size_(cp_size) {}

  Batch get(int64_t step, int micro) override {
    Batch full = inner_->get(step, micro);
    Batch b{shard(full.tokens), shard(full.targets)};
    // Packed documents: the whole sequence's starts, and where this shard begins in it.
    b.doc_starts = std::move(full.doc_starts);
    b.position_offset = full.position_offset + rank_ * b.tokens.size(1);
    return b;
  }
  std::string describe() const override {
    return absl::StrFormat("%s, context shard %d of %d", inner_->describe(), rank_, size_);
  }

 private:
  Tensor shard(const Tensor& t) const {
    MSA_CHECK(t.ndim() == 2 && t.dtype() == DType::kI32 && t.size(1) % size_ == 0,
              "context shard: batch %s must be i32 [batch, T] with T a multiple of --cp %d",
              t.describe(), size_);
    const int64_t batch = t.size(0), T = t.size(1), n = T / size_;
    Tensor out = Tensor::empty({batch, n}, DType::kI32);
    for (int64_t b = 0; b < batch; ++b)
      std::memcpy(out.data<int32_t>() + b * n, t.data<int32_t>() + b * T + rank_ * n,
                  n * sizeof(int32_t));
    return out;
  }

  std::unique_ptr<BatchSource> inner_;
  int rank_, size_;
};

}  // namespace

std::unique_ptr<BatchSource> make_context_shard_source(std::unique_ptr<BatchSource> inner,
                                                       int cp_rank, int cp_size) {
  if (cp_size == 1) return inner;
  return std::make_unique<ContextShardSource>(std::move(inner), cp_rank, cp_size);
}

}  // namespace msa
