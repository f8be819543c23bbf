// Packed documents (msa-train --pack_documents): a training row of T tokens may hold the ends and
// starts of several documents. Each document is then its own sequence for everything that mixes
// positions: attention (dense and MSA), the MSA selection (blocks counted from the document's
// start, as the reference kernels' cu_seqlens count them), the index loss and RoPE (positions
// restart at 0). The per-token layers (embedding, norms, MLP, LM head) are unaffected.
//
// A row's documents are consecutive and cover it: row b is cut at its document starts
// s_0 = 0 < s_1 < ... < s_m < T into segments [s_i, s_{i+1}) (s_{m+1} = T).
// model/segmented_kernels.h runs the attention kernels per segment on views of the activations.
#pragma once

#include <cstdint>
#include <vector>

namespace msa {

// One document of a packed batch: tokens [begin, end) of batch row `row`.
struct DocumentSegment {
  int64_t row = 0;
  int64_t begin = 0;
  int64_t end = 0;
  int64_t length() const { return end - begin; }
  // The first token's index in the flattened [batch * T] token order.
  int64_t first_token(int64_t T) const { return row * T + begin; }
};

class DocumentSegments {
 public:
  // From each row's document starts: starts.size() == batch; each row's list is strictly
  // increasing, begins with 0 and stays below T (aborts otherwise: the data source builds them).
  static DocumentSegments from_starts(int64_t batch, int64_t T,
                                      const std::vector<std::vector<int64_t>>& starts);

  int64_t batch() const { return batch_; }
  int64_t seq_len() const { return T_; }
  // In row order, then position order.
  const std::vector<DocumentSegment>& segments() const { return segments_; }
  // True when some row holds more than one document (else every kernel can run on whole rows).
  bool any_split() const { return static_cast<int64_t>(segments_.size()) > batch_; }

 private:
  int64_t batch_ = 0, T_ = 0;
  std::vector<DocumentSegment> segments_;
};

}  // namespace msa
