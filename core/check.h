// Fatal checks for programming errors (broken internal contracts, not bad user input).
// Bad user input is reported with absl::Status instead; see core/status.h.
#pragma once

#include <string>

#include "absl/strings/str_format.h"

namespace msa::internal {
[[noreturn]] void check_failed(const char* file, int line, const char* cond, const std::string& msg);
}  // namespace msa::internal

// MSA_CHECK(cond, "format %d", args...): aborts with file:line, the condition and the message.
#define MSA_CHECK(cond, ...)                                                               \
  do {                                                                                     \
    if (!(cond)) [[unlikely]]                                                              \
      ::msa::internal::check_failed(__FILE__, __LINE__, #cond, ::absl::StrFormat(__VA_ARGS__)); \
  } while (0)
