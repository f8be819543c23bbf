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

// A run of a row's local tokens that are consecutive in the sequence: `length` tokens from
// `position` on. A rank's tokens are one chunk per row ([0, T) without context parallelism, the
// shard [p0, p0 + T) with contiguous cp) or two (the zig-zag cp layout), in local order.
struct TokenChunk {
  int64_t position = 0;
  int64_t length = 0;
  int64_t end() const { return position + length; }
};

// One document of a packed batch, as far as this rank's queries see it: its queries are tokens
// [begin, end) of batch row `row` (local indices), the first at sequence position `position`;
// its keys start at position key_begin (the document's start) and end with the queries. Without
// context parallelism key_begin == begin == position.
struct DocumentSegment {
  int64_t row = 0;
  int64_t begin = 0;
  int64_t end = 0;
  int64_t key_begin = 0;
  int64_t position = 0;
  // An earlier segment of this row is the same document (zig-zag cp: its early and late chunk):
  // their keys overlap, so key gradients must be added, not written.
  bool repeat = false;
  int64_t length() const { return end - begin; }
  // The first query's index in the flattened [batch * T] token order.
  int64_t first_token(int64_t T) const { return row * T + begin; }
};

class DocumentSegments {
 public:
  // From each row's document starts: starts.size() == batch; each row's list is strictly
  // increasing and begins with 0 (aborts otherwise: the data source builds them). The starts are
  // positions in the whole sequence; this rank's T tokens of a row are `chunks` (lengths summing
  // to T; empty: {0, T}) and its keys are the positions [0, the last chunk end) (context
  // parallelism: the gathered keys).
  static DocumentSegments from_starts(int64_t batch, int64_t T,
                                      const std::vector<std::vector<int64_t>>& starts,
                                      const std::vector<TokenChunk>& chunks = {});

  int64_t batch() const { return batch_; }
  int64_t seq_len() const { return T_; }  // this rank's tokens per row
  // The position of local token 0 (context parallelism: where the shard starts).
  int64_t position_offset() const { return p0_; }
  int64_t key_len() const { return key_len_; }  // keys per row
  // The RoPE position of segment s's first query (its distance from the document's start).
  int64_t rope_offset(const DocumentSegment& s) const { return s.position - s.key_begin; }
  // In row order, then position order: the documents that hold at least one of this rank's tokens.
  const std::vector<DocumentSegment>& segments() const { return segments_; }
  // True when some row's queries or keys are not one whole document (else every kernel can run on
  // whole rows).
  bool any_split() const { return any_split_; }

 private:
  int64_t batch_ = 0, T_ = 0, p0_ = 0, key_len_ = 0;
  bool any_split_ = false;
  std::vector<DocumentSegment> segments_;
};

}  // namespace msa
