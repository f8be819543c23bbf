#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/rng.h"
#include "data/window_sampler.h"
#include "train/batch_source.h"

namespace msa {
namespace {

class RepeatingSource : public BatchSource {
 public:
  RepeatingSource(int64_t vocab, int64_t batch, int64_t seq_len, int64_t period, uint64_t seed,
                  const DataLayout& layout)
      : batch_(batch), seq_len_(seq_len), period_(period), layout_(layout) {
    // Distinct tokens when period <= vocab (a seeded Fisher-Yates prefix), so each token
    // determines the next one.
    std::vector<int32_t> perm(vocab);
    for (int64_t i = 0; i < vocab; ++i) perm[i] = static_cast<int32_t>(i);
    for (int64_t i = 0; i < period; ++i) {
      int64_t j = i + philox4x32(seed, i).v[0] % (vocab - i > 0 ? vocab - i : 1);
      if (i < vocab) std::swap(perm[i], perm[j < vocab ? j : i]);
      cycle_.push_back(perm[i % vocab]);
    }
  }

  Batch get(int64_t /*step*/, int micro) override {
    Batch b{Tensor::empty({batch_, seq_len_}, DType::kI32),
            Tensor::empty({batch_, seq_len_}, DType::kI32),
            {},
            {}};
    int32_t* tok = b.tokens.data<int32_t>();
    int32_t* tgt = b.targets.data<int32_t>();
    for (int64_t s = 0; s < batch_; ++s) {
      // Each row of the global batch starts at a different phase of the same period: data-parallel
      // ranks and micro-batches read other rows, as one rank with their whole batch would.
      // (The sample numbering of the other sources, at step 1: the batch is the same every step.)
      const int64_t row =
          sample_number(1, micro, layout_.grad_accum, layout_.dp_rank, layout_.dp_size, batch_, s);
      for (int64_t t = 0; t <= seq_len_; ++t) {
        int32_t v = cycle_[(t + row * 7) % period_];
        if (t < seq_len_) tok[s * seq_len_ + t] = v;
        if (t > 0) tgt[s * seq_len_ + t - 1] = v;
      }
    }
    return b;
  }

  std::string describe() const override {
    return absl::StrFormat("synthetic repeating sequence (period %d)", period_);
  }

 private:
  int64_t batch_, seq_len_, period_;
  DataLayout layout_;
  std::vector<int32_t> cycle_;
};

}  // namespace

std::unique_ptr<BatchSource> make_repeating_source(int64_t vocab_size, int64_t batch,
                                                   int64_t seq_len, int64_t period, uint64_t seed,
                                                   const DataLayout& layout) {
  return std::make_unique<RepeatingSource>(vocab_size, batch, seq_len, period, seed, layout);
}

}  // namespace msa
