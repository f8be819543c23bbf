// Sets an environment variable (a kernel-path switch such as MSA_KV_OUTER_SEQS) for a scope;
// null or "" leaves it unset. The variable is unset again at the end of the scope.
#pragma once

#include <cstdlib>

namespace msa::test {

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (value != nullptr && *value != 0) setenv(name, value, 1);
  }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

}  // namespace msa::test
