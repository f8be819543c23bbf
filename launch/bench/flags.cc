#include "launch/bench/flags.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace msa::bench {

std::vector<int64_t> parse_lengths(const std::string& list, const char* flag) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1) {
      std::fprintf(stderr, "msa-bench: invalid --%s entry '%s' (want positive integers)\n", flag,
                   std::string(part).c_str());
      std::exit(1);
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace msa::bench
