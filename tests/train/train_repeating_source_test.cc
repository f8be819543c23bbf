// The repeating-sequence source (msa-train's default --data): data-parallel ranks and
// micro-batches read their own rows of the global batch, as the other sources do, so N ranks
// train on what one rank with N times the batch does.
#include <vector>

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

}  // namespace
}  // namespace msa
