#include <cstdlib>

#include "gtest/gtest.h"
#include "kernels/cpu/parallel.h"

namespace msa {
namespace {

// The default thread count is read from MSA_CPU_THREADS once per process, so each case runs in a
// death-test child that sets the variable before anything asks for it.
void expect_threads_then_exit(const char* value, int expected) {
  setenv("MSA_CPU_THREADS", value, 1);
  std::exit(cpu::num_threads() == expected ? 0 : 1);
}

TEST(CpuParallelDeathTest, ThreadsComeFromTheEnvironment) {
  EXPECT_EXIT(expect_threads_then_exit("3", 3), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(expect_threads_then_exit("4096", 4096), ::testing::ExitedWithCode(0), "");
}

TEST(CpuParallelDeathTest, ThreadCountsOutOfRangeStopTheRun) {
  // 2^32 + 4 would narrow to 4 threads; 0 and negatives are not counts.
  for (const char* bad : {"0", "-2", "4097", "4294967300"}) {
    EXPECT_DEATH(expect_threads_then_exit(bad, 0), "MSA_CPU_THREADS=.* is not a thread count")
        << bad;
  }
  EXPECT_DEATH(expect_threads_then_exit("four", 0), "MSA_CPU_THREADS=\"four\" is not an integer");
}

}  // namespace
}  // namespace msa
