// absl::Status helpers: the error currency across module boundaries.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MSA_STATUS_CONCAT_INNER_(a, b) a##b
#define MSA_STATUS_CONCAT_(a, b) MSA_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define MSA_RETURN_IF_ERROR(expr)                    \
  do {                                               \
    ::absl::Status msa_status_ = (expr);             \
    if (!msa_status_.ok()) return msa_status_;       \
  } while (0)

// MSA_ASSIGN_OR_RETURN(auto x, f()): assigns the value of a StatusOr or returns its error.
#define MSA_ASSIGN_OR_RETURN(lhs, expr) \
  MSA_ASSIGN_OR_RETURN_IMPL_(MSA_STATUS_CONCAT_(msa_statusor_, __LINE__), lhs, expr)
#define MSA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

namespace msa {
// Prefixes a status message with context ("reading ckpt.h5: ..."), keeping its code.
inline absl::Status annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), std::string(context) + ": " + std::string(s.message()));
}
}  // namespace msa
