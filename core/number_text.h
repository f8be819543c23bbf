// Numbers as text that reads back exactly: flags printed for the user to pass back (msa-convert's
// msa-train flags) and values compared in error messages must not round.
#pragma once

#include <charconv>
#include <cmath>
#include <string>

namespace msa {

// The shortest text that parses back to v ("500000", "0.1", "1e-300", "9.999999747378752e-06"):
// values that differ never print alike.
inline std::string shortest_text(double v) {
  char buf[64];
  const double a = std::abs(v);
  const bool fixed = a == 0 || (a >= 1e-5 && a < 1e16);
  const auto r = std::to_chars(buf, buf + sizeof(buf), v,
                               fixed ? std::chars_format::fixed : std::chars_format::general);
  return std::string(buf, r.ptr);
}

}  // namespace msa
