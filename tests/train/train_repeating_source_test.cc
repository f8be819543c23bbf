// The repeating-sequence source (msa-train's default --data): data-parallel ranks and
// micro-batches read their own rows of the global batch, as the other sources do, so N ranks
// train on what one rank with N times the batch does.
#include <vector>

#include "core/tensor.h"
#include "gtest/gtest.h"
#include "train/batch_source.h"

namespace msa {
namespace {

TEST(RepeatingSourceTest, RanksAndMicroBatchesReadTheirRowsOfTheGlobalBatch) {
  const int64_t T = 16;
  auto whole = make_repeating_source(96, 8, T, 61, 3);
  const std::vector<double> all = whole->get(1, 0).tokens.to_double_vector();
  for (int rank = 0; rank < 2; ++rank)
    for (int micro = 0; micro < 2; ++micro) {
      DataLayout layout;
      layout.grad_accum = 2;
      layout.dp_rank = rank;
      layout.dp_size = 2;
      auto part = make_repeating_source(96, 2, T, 61, 3, layout);
      const std::vector<double> mine = part->get(5, micro).tokens.to_double_vector();
      const int64_t first = (micro * 2 + rank) * 2;  // sample_number's order: micro-batch, rank
      EXPECT_EQ(mine, std::vector<double>(all.begin() + first * T, all.begin() + (first + 2) * T))
          << "rank " << rank << ", micro-batch " << micro;
    }
}

// Each row is a window of one repeating sequence: every target is the next token, the last one
// included (the test above checks only the tokens; targets equal to the tokens, a copy task,
// passed it, and training on them too).
TEST(RepeatingSourceTest, EveryTargetIsTheNextToken) {
  const int64_t T = 16, batch = 3;
  auto source = make_repeating_source(96, batch, T, 61, 3);
  for (int64_t step : {1, 2, 7}) {
    const Batch b = source->get(step, 0);
    const std::vector<double> tokens = b.tokens.to_double_vector();
    const std::vector<double> targets = b.targets.to_double_vector();
    ASSERT_EQ(tokens.size(), static_cast<size_t>(batch * T));
    ASSERT_EQ(targets.size(), tokens.size());
    for (int64_t row = 0; row < batch; ++row)
      for (int64_t t = 0; t + 1 < T; ++t)
        EXPECT_EQ(targets[row * T + t], tokens[row * T + t + 1])
            << "step " << step << " row " << row << " position " << t;
    // The last target continues the sequence: the token that followed the last input where the
    // same input occurred earlier in some row.
    for (int64_t row = 0; row < batch; ++row) {
      const double last = tokens[row * T + T - 1];
      bool seen = false;
      for (int64_t i = 0; i + 1 < batch * T && !seen; ++i)
        if ((i + 1) % T != 0 && tokens[i] == last) {
          EXPECT_EQ(targets[row * T + T - 1], tokens[i + 1]) << "step " << step << " row " << row;
          seen = true;
        }
    }
    // The period's tokens are distinct (61 <= vocab 96): no target is its own input.
    for (size_t i = 0; i < targets.size(); ++i) EXPECT_NE(targets[i], tokens[i]) << i;
  }
}

}  // namespace
}  // namespace msa
