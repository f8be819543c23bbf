// Sets an environment variable (a kernel-path switch such as MSA_KV_OUTER_SEQS) for a scope; null
// or "" unsets it for the scope. The value it had before (or its absence) is restored at the end,
// so a switch the caller set for the whole run (MSA_INDEX_LOSS_WGMMA=0) outlives the scope.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace msa::test {

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) previous_ = old;
    if (value != nullptr && *value != 0)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (previous_)
      setenv(name_, previous_->c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> previous_;
};

}  // namespace msa::test
