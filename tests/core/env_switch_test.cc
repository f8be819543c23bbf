#include "core/env_switch.h"

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/scoped_env.h"

namespace msa {
namespace {

using test::ScopedEnv;

constexpr char kName[] = "MSA_ENV_SWITCH_TEST";

TEST(EnvSwitchTest, IsMatchesTheWholeValueOnly) {
  {
    const ScopedEnv env(kName, nullptr);
    EXPECT_FALSE(env_is(kName, "reference"));
  }
  {
    setenv(kName, "", 1);  // ScopedEnv unsets ""; the empty value must read as unset too
    EXPECT_FALSE(env_is(kName, "reference"));
    unsetenv(kName);
  }
  {
    const ScopedEnv env(kName, "reference");
    EXPECT_TRUE(env_is(kName, "reference"));
  }
  const ScopedEnv env(kName, "1");
  EXPECT_FALSE(env_is(kName, "0", {"1"}));
  EXPECT_TRUE(env_is(kName, "1", {"0"}));
}

TEST(EnvSwitchTest, IntReadsIntegersAndTreatsEmptyAsUnset) {
  {
    const ScopedEnv env(kName, nullptr);
    EXPECT_FALSE(env_int(kName).has_value());
  }
  {
    setenv(kName, "", 1);  // ScopedEnv leaves "" unset; the empty value must read as unset too
    EXPECT_FALSE(env_int(kName).has_value());
    unsetenv(kName);
  }
  {
    const ScopedEnv env(kName, "40");
    ASSERT_TRUE(env_int(kName).has_value());
    EXPECT_EQ(*env_int(kName), 40);
  }
  {
    const ScopedEnv env(kName, "-3");
    EXPECT_EQ(env_int(kName).value_or(0), -3);
  }
  {
    const ScopedEnv env(kName, "8589934592");  // past 32 bits
    EXPECT_EQ(env_int(kName).value_or(0), int64_t(1) << 33);
  }
}

// tests/testing/scoped_env.h: a scope's value, then the caller's back (a switch set for the whole
// run, e.g. MSA_INDEX_LOSS_WGMMA=0, outlives a test that pins it for a while).
TEST(EnvSwitchTest, ScopedEnvRestoresTheCallersValue) {
  setenv(kName, "outer", 1);
  {
    const ScopedEnv env(kName, "inner");
    EXPECT_TRUE(env_is(kName, "inner"));
    {
      const ScopedEnv unset(kName, nullptr);
      EXPECT_EQ(std::getenv(kName), nullptr);
    }
    EXPECT_TRUE(env_is(kName, "inner"));
  }
  EXPECT_TRUE(env_is(kName, "outer"));
  unsetenv(kName);
  { const ScopedEnv env(kName, "5"); }
  EXPECT_EQ(std::getenv(kName), nullptr);
}

TEST(EnvSwitchDeathTest, IsRejectsValuesTheSwitchDoesNotTake) {
  for (const char* bad : {"refrence", "reference2", "ref", "0"}) {
    const ScopedEnv env(kName, bad);
    EXPECT_DEATH(env_is(kName, "reference"), "MSA_ENV_SWITCH_TEST=\"" + std::string(bad) +
                                                 "\" is not one of the values it takes")
        << bad;
  }
  const ScopedEnv env(kName, "false");
  EXPECT_DEATH(env_is(kName, "0", {"1"}), "takes: \"0\", \"1\"");
}

TEST(EnvSwitchDeathTest, IntRejectsWhatIsNotAnInteger) {
  for (const char* bad : {"abc", "12k", "1.5", "0x10"}) {
    const ScopedEnv env(kName, bad);
    EXPECT_DEATH(env_int(kName),
                 "MSA_ENV_SWITCH_TEST=\"" + std::string(bad) + "\" is not an integer")
        << bad;
  }
}

}  // namespace
}  // namespace msa
