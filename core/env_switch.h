// The developer switches read from the environment (MSA_TOPK, MSA_KV_OUTER_CHUNK, ...: the table
// in kernels/README.md). One reading for all of them, so that a mistyped number stops the run with
// the variable's name instead of reading as 0, and an empty value means unset everywhere.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace msa {

// True when the variable is set to exactly `value` (MSA_TOPK=reference, MSA_KV_OUTER_WGMMA=0).
bool env_is(const char* name, std::string_view value);

// The variable's integer value; nullopt when it is unset or empty. A value absl::SimpleAtoi does
// not read as a base-10 integer (it allows a sign and surrounding spaces) aborts with a message
// naming the variable and its value.
std::optional<int64_t> env_int(const char* name);

}  // namespace msa
