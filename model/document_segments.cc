#include "model/document_segments.h"

#include <algorithm>

#include "core/check.h"

namespace msa {

DocumentSegments DocumentSegments::from_starts(int64_t batch, int64_t T,
                                               const std::vector<std::vector<int64_t>>& starts,
                                               const std::vector<TokenChunk>& chunks_in) {
  MSA_CHECK(batch > 0 && T > 0, "document segments: batch %d and T %d must be positive", batch, T);
  MSA_CHECK(static_cast<int64_t>(starts.size()) == batch,
            "document segments: %d rows of document starts for a batch of %d", starts.size(),
            batch);
  const std::vector<TokenChunk> chunks =
      chunks_in.empty() ? std::vector<TokenChunk>{{0, T}} : chunks_in;
  DocumentSegments d;
  d.batch_ = batch;
  d.T_ = T;
  d.p0_ = chunks.front().position;
  int64_t total = 0;
  for (const TokenChunk& c : chunks) {
    MSA_CHECK(c.position >= 0 && c.length > 0, "document segments: chunk at %d of %d tokens",
              c.position, c.length);
    total += c.length;
    d.key_len_ = std::max(d.key_len_, c.end());
  }
  MSA_CHECK(total == T, "document segments: chunks of %d tokens for T = %d", total, T);
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int64_t>& s = starts[b];
    MSA_CHECK(!s.empty() && s[0] == 0, "document segments: row %d does not start a document at 0",
              b);
    int64_t local = 0;  // the chunk's first local token
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      const TokenChunk& c = chunks[ci];
      for (size_t i = 0; i < s.size(); ++i) {
        const int64_t end = i + 1 < s.size() ? s[i + 1] : std::max(c.end(), s[i] + 1);
        MSA_CHECK(s[i] < end, "document segments: row %d: starts must increase", b);
        // Whether document [s[i], end) holds tokens of chunk `k`.
        const auto overlaps = [&](const TokenChunk& k) {
          return end > k.position && s[i] < k.end();
        };
        if (!overlaps(c)) continue;
        const int64_t first = std::max(s[i], c.position), last = std::min(end, c.end());
        DocumentSegment seg{b, local + first - c.position, local + last - c.position, s[i], first};
        // A repeat: the document had a segment in an earlier chunk of this row.
        seg.repeat = std::any_of(chunks.begin(), chunks.begin() + ci, overlaps);
        d.any_split_ = d.any_split_ || seg.begin != 0 || seg.end != T || seg.key_begin != 0;
        d.segments_.push_back(seg);
      }
      local += c.length;
    }
  }
  return d;
}

}  // namespace msa
