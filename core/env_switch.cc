#include "core/env_switch.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "core/check.h"

namespace msa {

bool env_is(const char* name, std::string_view value) {
  const char* env = std::getenv(name);
  return env != nullptr && value == env;
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
