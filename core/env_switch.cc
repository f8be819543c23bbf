#include "core/env_switch.h"

#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "core/check.h"

namespace msa {

bool env_is(const char* name, std::string_view value,
            std::initializer_list<std::string_view> others) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == 0) return false;
  if (value == env) return true;
  for (std::string_view other : others)
    if (other == env) return false;
  // The message only on the way to the abort. std::string arithmetic: this Abseil's StrCat takes
  // absl::string_view, not std::string_view.
  std::string takes = "\"" + std::string(value) + "\"";
  for (std::string_view other : others) takes += ", \"" + std::string(other) + "\"";
  MSA_CHECK(false,
            "environment variable %s=\"%s\" is not one of the values it takes: %s (or unset)", name,
            env, takes);
  return false;
}

std::optional<int64_t> env_int(const char* name) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == 0) return std::nullopt;
  int64_t value = 0;
  MSA_CHECK(absl::SimpleAtoi(env, &value), "environment variable %s=\"%s\" is not an integer", name,
            env);
  return value;
}

}  // namespace msa
