// The learning-rate schedule: linear warm-up to the peak, cosine decay from the peak to min_lr at
// the last step, with and without warm-up.
#include <cmath>

#include "gtest/gtest.h"
#include "train/lr_schedule.h"

namespace msa {
namespace {

TEST(LrScheduleTest, WarmsUpLinearlyThenDecaysFromThePeakToTheFloor) {
  const LrSchedule s{1e-3, 1e-4, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(1), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(5), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);
  // Halfway through the decay: the mean of the peak and the floor.
  EXPECT_NEAR(s.at(60), 0.5 * (1e-3 + 1e-4), 1e-15);
  EXPECT_DOUBLE_EQ(s.at(110), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(200), 1e-4);
  for (int64_t step = 11; step <= 110; ++step) EXPECT_LT(s.at(step), s.at(step - 1)) << step;
}

// Without warm-up the first step trains at the peak (it started already below it), and a one-step
// run at --lr, not at --min_lr.
TEST(LrScheduleTest, WithoutWarmupTheFirstStepIsAtThePeak) {
  const LrSchedule s{1e-3, 1e-4, 0, 101};
  EXPECT_DOUBLE_EQ(s.at(1), 1e-3);
  EXPECT_NEAR(s.at(51), 0.5 * (1e-3 + 1e-4), 1e-15);
  EXPECT_DOUBLE_EQ(s.at(101), 1e-4);
  EXPECT_DOUBLE_EQ((LrSchedule{1e-3, 1e-4, 0, 1}.at(1)), 1e-3);
}

}  // namespace
}  // namespace msa
