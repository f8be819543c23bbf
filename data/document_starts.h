// Where documents start inside a training window (msa-train --pack_documents).
//
// msa-data concatenates documents into shards, each followed by the EOS id (data/shard.h,
// data/text_tokenizer.h) and records that id as "eos_id" in the metadata file <prefix>.json next
// to its shards <prefix>-NNNNN.tok. In a window of input tokens a document starts at position 0
// (the window may begin mid-document: that part is a document of its own to the model) and right
// after every EOS: the EOS belongs to the document it ends.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace msa {

// 0, then t + 1 for every tokens[t] == eos_id with t + 1 < tokens.size(), ascending.
std::vector<int64_t> document_starts(absl::Span<const int32_t> tokens, int32_t eos_id);

// The EOS id of the shards at `shard_paths` from their msa-data metadata files (<prefix>.json for
// <dir>/<prefix>-NNNNN.tok). Fails naming --pack_documents and the file when a shard's name does
// not tell its metadata file, the file cannot be read or parsed, its "eos_id" is missing or null
// (no EOS separates the documents) or, with vocab_size > 0, not below it, or the metadata files
// disagree.
absl::StatusOr<int32_t> shards_eos_id(const std::vector<std::string>& shard_paths,
                                      int64_t vocab_size = 0);

}  // namespace msa
