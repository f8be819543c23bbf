// Where training and evaluation batches come from. A source is a pure function of the step
// (and its own configuration), so a resumed run draws exactly the batches an uninterrupted one
// would have.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace msa {

struct Batch {
  Tensor tokens;   // i32 [batch, T] on the CPU
  Tensor targets;  // i32 [batch, T] on the CPU; -100 = ignored
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The micro-batch `micro` (0-based) of optimizer step `step` (1-based) for this data-parallel
  // rank: `batch` sequences of `seq_len` tokens.
  virtual Batch get(int64_t step, int micro) = 0;
  virtual std::string describe() const = 0;
};

// A fixed pseudo-random sequence of `period` tokens repeated over the context: a model that learns
// it predicts every token after the first period exactly (the foundation's learning test).
std::unique_ptr<BatchSource> make_repeating_source(int64_t vocab_size, int64_t batch,
                                                   int64_t seq_len, int64_t period, uint64_t seed);

}  // namespace msa
