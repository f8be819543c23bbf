// BatchSource over a synthetic retrieval task (data/synthetic.h), generated on
// the fly.
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/synthetic.h"
#include "data/window_sampler.h"
#include "train/batch_source.h"

namespace msa {
namespace {

// Validation samples come from their own stream, never drawn in training.
constexpr uint64_t kValidationSeedSalt = 0x76616C6964ULL;

class SyntheticSource : public BatchSource {
 public:
  SyntheticSource(const SyntheticConfig& config, int64_t batch, const DataLayout& layout,
                  bool validation)
      : config_(config), batch_(batch), layout_(layout), validation_(validation) {}

  Batch get(int64_t step, int micro) override {
    const int64_t T = config_.seq_len;
    Batch b{
        Tensor::empty({batch_, T}, DType::kI32), Tensor::empty({batch_, T}, DType::kI32), {}, {}};
    for (int64_t i = 0; i < batch_; ++i) {
      // Validation: each data-parallel rank its own rows of the held-out batch, as in training.
      const int64_t n = validation_ ? ((step - 1) * layout_.dp_size + layout_.dp_rank) * batch_ + i
                                    : sample_number(step, micro, layout_.grad_accum,
                                                    layout_.dp_rank, layout_.dp_size, batch_, i,
                                                    layout_.base_step, layout_.base_sample);
      const SyntheticSample s = make_synthetic_sample(config_, static_cast<uint64_t>(n));
      std::copy(s.tokens.begin(), s.tokens.end(), b.tokens.data<int32_t>() + i * T);
      std::copy(s.targets.begin(), s.targets.end(), b.targets.data<int32_t>() + i * T);
    }
    return b;
  }

  std::string describe() const override {
    const std::string depth = config_.depth < 0 ? std::string("random depth")
                                                : absl::StrFormat("depth %g", config_.depth);
    return absl::StrFormat("synthetic %s (%d facts, %s%s)", synthetic_task_name(config_.task),
                           synthetic_pairs(config_), depth,
                           validation_ ? ", validation stream" : "");
  }

 private:
  SyntheticConfig config_;
  int64_t batch_;
  DataLayout layout_;
  bool validation_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BatchSource>> make_synthetic_source(
    const std::string& task, int64_t vocab_size, int64_t batch, int64_t seq_len, int pairs,
    double depth, uint64_t seed, const DataLayout& layout, bool validation) {
  SyntheticConfig config;
  MSA_ASSIGN_OR_RETURN(config.task, parse_synthetic_task(task));
  config.seq_len = seq_len;
  config.pairs = pairs;
  config.depth = depth;
  config.seed = validation ? seed ^ kValidationSeedSalt : seed;
  MSA_RETURN_IF_ERROR(validate(config));
  if (vocab_size < kSyntheticVocab) {
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --vocab_size=%d: the synthetic tasks use ids up to %d", vocab_size,
                        kSyntheticVocab - 1));
  }
  return std::unique_ptr<BatchSource>(new SyntheticSource(config, batch, layout, validation));
}

}  // namespace msa
