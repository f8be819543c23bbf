#include "model/document_segments.h"

#include "core/check.h"

namespace msa {

DocumentSegments DocumentSegments::from_starts(int64_t batch, int64_t T,
                                               const std::vector<std::vector<int64_t>>& starts) {
  MSA_CHECK(batch > 0 && T > 0, "document segments: batch %d and T %d must be positive", batch, T);
  MSA_CHECK(static_cast<int64_t>(starts.size()) == batch,
            "document segments: %d rows of document starts for a batch of %d", starts.size(),
            batch);
  DocumentSegments d;
  d.batch_ = batch;
  d.T_ = T;
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int64_t>& s = starts[b];
    MSA_CHECK(!s.empty() && s[0] == 0, "document segments: row %d does not start a document at 0",
              b);
    for (size_t i = 0; i < s.size(); ++i) {
      const int64_t end = i + 1 < s.size() ? s[i + 1] : T;
      MSA_CHECK(s[i] < end && end <= T,
                "document segments: row %d: starts must increase and stay below T = %d", b, T);
      d.segments_.push_back({b, s[i], end});
    }
  }
  return d;
}

}  // namespace msa
