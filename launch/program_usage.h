// --help for the msa-* programs.
#pragma once

#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/types/span.h"

namespace msa {

// Sets the usage message and makes --help list the flags defined anywhere under
// launch/ (Abseil's default only lists flags from a file named after the
// program, which `msa-train` vs `msa_train_main.cc` never matches). Call before
// absl::ParseCommandLine.
void set_program_usage(const char* usage);

// absl::ParseCommandLine's left-over words past the program's `expected` positional ones (the
// program name counts as one): each is named on stderr and the result is true, for the caller to
// exit 1. Abseil leaves them to the program, and ignored, `--qk_norm false` turned qk_norm on and
// dropped the "false".
bool has_stray_arguments(const std::vector<char*>& rest, int expected, const char* program);

// Whether a flag was set to anything but its default (this Abseil keeps IsSpecifiedOnCommandLine
// private): how the programs tell a flag given for another mode, to refuse it.
bool flag_set(const absl::CommandLineFlag& flag);
// "--name" of each of `flags` that is set, in order.
std::vector<std::string> flags_set(absl::Span<const absl::CommandLineFlag* const> flags);

}  // namespace msa
