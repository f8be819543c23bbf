// The free memory the memory check compares with: MemAvailable of /proc/meminfo on the CPU.
#include "gtest/gtest.h"
#include "launch/available_memory.h"

namespace msa {
namespace {

TEST(AvailableMemoryTest, ParsesMemAvailableInKib) {
  const std::string meminfo =
      "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";
  ASSERT_TRUE(parse_mem_available(meminfo).has_value());
  EXPECT_EQ(*parse_mem_available(meminfo), 20000000.0 * 1024);
}

TEST(AvailableMemoryTest, MissingOrMalformedIsUnknown) {
  EXPECT_FALSE(parse_mem_available("MemTotal: 100 kB\n").has_value());
  EXPECT_FALSE(parse_mem_available("MemAvailable: lots\n").has_value());
  EXPECT_FALSE(parse_mem_available("MemAvailable: 100 MB\n").has_value());
}

TEST(AvailableMemoryTest, ThisHostReportsSomething) {
  const std::optional<double> bytes = host_available_bytes();
  ASSERT_TRUE(bytes.has_value());  // Linux CI
  EXPECT_GT(*bytes, 0);
}

}  // namespace
}  // namespace msa
