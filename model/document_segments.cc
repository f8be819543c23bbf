#include "model/document_segments.h"

#include <algorithm>

#include "core/check.h"

namespace msa {

DocumentSegments DocumentSegments::from_starts(int64_t batch, int64_t T,
                                               const std::vector<std::vector<int64_t>>& starts,
                                               int64_t position_offset) {
  MSA_CHECK(batch > 0 && T > 0, "document segments: batch %d and T %d must be positive", batch, T);
  MSA_CHECK(position_offset >= 0, "document segments: position offset %d < 0", position_offset);
  MSA_CHECK(static_cast<int64_t>(starts.size()) == batch,
            "document segments: %d rows of document starts for a batch of %d", starts.size(),
            batch);
  DocumentSegments d;
  d.batch_ = batch;
  d.T_ = T;
  d.p0_ = position_offset;
  const int64_t p1 = position_offset + T;  // this rank's tokens are positions [p0, p1)
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int64_t>& s = starts[b];
    MSA_CHECK(!s.empty() && s[0] == 0, "document segments: row %d does not start a document at 0",
              b);
    for (size_t i = 0; i < s.size(); ++i) {
      const int64_t end = i + 1 < s.size() ? s[i + 1] : std::max(p1, s[i] + 1);
      MSA_CHECK(s[i] < end, "document segments: row %d: starts must increase", b);
      if (end <= position_offset || s[i] >= p1) continue;  // none of this rank's tokens
      const DocumentSegment seg{b, std::max(s[i], position_offset) - position_offset,
                                std::min(end, p1) - position_offset, s[i]};
      d.any_split_ = d.any_split_ || seg.begin != 0 || seg.end != T || seg.key_begin != 0;
      d.segments_.push_back(seg);
    }
  }
  return d;
}

}  // namespace msa
