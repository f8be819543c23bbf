#include "launch/program_usage.h"

#include <cstdio>

#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace msa {

void set_program_usage(const char* usage) {
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "launch/");
  };
  config.contains_helpshort_flags = config.contains_help_flags;
  absl::SetFlagsUsageConfig(config);
}

bool has_stray_arguments(const std::vector<char*>& rest, int expected, const char* program) {
  if (static_cast<int>(rest.size()) <= expected) return false;
  for (size_t i = expected; i < rest.size(); ++i)
    std::fprintf(stderr,
                 "%s: unexpected argument '%s' (flags take their value as --flag=value; a boolean "
                 "flag as --flag, --noflag or --flag=false; see --help)\n",
                 program, rest[i]);
  return true;
}

bool flag_set(const absl::CommandLineFlag& flag) {
  return flag.CurrentValue() != flag.DefaultValue();
}

std::vector<std::string> flags_set(absl::Span<const absl::CommandLineFlag* const> flags) {
  std::vector<std::string> out;
  for (const absl::CommandLineFlag* f : flags)
    if (flag_set(*f)) out.push_back("--" + std::string(f->Name()));
  return out;
}

}  // namespace msa
