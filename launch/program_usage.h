// --help for the msa-* programs.
#pragma once

namespace msa {

// Sets the usage message and makes --help list the flags defined anywhere under
// launch/ (Abseil's default only lists flags from a file named after the
// program, which `msa-train` vs `msa_train_main.cc` never matches). Call before
// absl::ParseCommandLine.
void set_program_usage(const char* usage);

}  // namespace msa
