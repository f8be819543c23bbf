// The developer switches read from the environment (MSA_TOPK, MSA_KV_OUTER_CHUNK, ...: the table
// in kernels/README.md). One reading for all of them, so that a mistyped value stops the run with
// the variable's name instead of quietly taking the default path (an A/B that compares a path with
// itself), and an empty value means unset everywhere.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string_view>

namespace msa {

// True when the variable is set to exactly `value` (MSA_TOPK=reference, MSA_KV_OUTER_WGMMA=0);
// false when it is unset, empty or one of `others` (the switch's other values). Anything else
// aborts with a message naming the variable and the values it takes.
bool env_is(const char* name, std::string_view value,
            std::initializer_list<std::string_view> others = {});

// The variable's integer value; nullopt when it is unset or empty. A value absl::SimpleAtoi does
// not read as a base-10 integer (it allows a sign and surrounding spaces) aborts with a message
// naming the variable and its value.
std::optional<int64_t> env_int(const char* name);

}  // namespace msa
