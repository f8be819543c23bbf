// Where training and evaluation batches come from. A source is a pure function of the step
// (and its own configuration), so a resumed run draws exactly the batches an uninterrupted one
// would have.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/document_segments.h"

namespace msa {

struct Batch {
  Tensor tokens;   // i32 [batch, T] on the CPU
  Tensor targets;  // i32 [batch, T] on the CPU; -100 = ignored
  // Packed documents (--pack_documents): per row, the positions where a document starts (0 first,
  // ascending; data/document_starts.h). Empty: each row is one sequence.
  std::vector<std::vector<int64_t>> doc_starts;
  // Context parallelism: where each row's tokens sit in the sequence (the cp shard: one chunk, or
  // two in the zig-zag layout; the document starts above are positions in the whole sequence).
  // Empty: the tokens are the whole sequence.
  std::vector<TokenChunk> chunks;
};

// The batch's documents for ForwardOptions::documents (null when it carries no document starts).
inline std::shared_ptr<const DocumentSegments> batch_documents(const Batch& b) {
  if (b.doc_starts.empty()) return nullptr;
  return std::make_shared<const DocumentSegments>(
      DocumentSegments::from_starts(b.tokens.size(0), b.tokens.size(1), b.doc_starts, b.chunks));
}

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The micro-batch `micro` (0-based) of optimizer step `step` (1-based) for this data-parallel
  // rank: `batch` sequences of `seq_len` tokens.
  virtual Batch get(int64_t step, int micro) = 0;
  virtual std::string describe() const = 0;
  // How many calls get(1, 0), get(2, 0), ... return batches of distinct rows before rows repeat
  // (a held-out split's windows wrap around; the data-parallel ranks' rows of one step count
  // together; 0 when the split is smaller than one global batch); -1: no limit (training sources,
  // synthetic data).
  virtual int64_t distinct_batches() const { return -1; }
  // What the samples are drawn from, beyond the flags that name it: for token shards their count,
  // total tokens and a hash of each shard's token count in file order ("" when the flags say it
  // all: generated data). A resumed run compares it with its checkpoint's, and the ranks with
  // each other, so that shards extended or rebuilt to other sizes under the same --data glob (a
  // new window order, trained windows moved into the validation split) are not read as the same
  // data. Tokens are not hashed (that would read every token at start).
  virtual std::string data_identity() const { return ""; }
  // Hashes of msa-data's metadata files beside the shards (their inputs and byte sizes, the
  // tokenizer; a synthetic task and seed), "" when there are none: "content C, file F", C over
  // what decides the tokens (metadata_content: not where inputs and tokenizer were read from), F
  // over the whole files. A resumed run compares it with its checkpoint's when both have one
  // (same_data_metadata), so a rebuild to the same sizes from other inputs or settings is
  // noticed. Not compared across ranks (node-local copies of the shards alone are the same data).
  virtual std::string data_metadata() const { return ""; }
};

// How a run's global batch is split: a source for rank `dp_rank` of `dp_size` returns that rank's
// share, so the ranks of one step read disjoint samples.
struct DataLayout {
  int grad_accum = 1;
  int dp_rank = 0;
  int dp_size = 1;
  // A resumed run: the steps after base_step draw samples from base_sample on (the checkpoint's
  // cursor), whatever the global batch was before (data/window_sampler.h, sample_number).
  int64_t base_step = 0;
  int64_t base_sample = 0;
};

// Windows of token shards (data/window_sampler.h): `glob` names the shards; `validation` selects
// the held-out split (batch b of a validation source is always the same windows).
// pack_documents: batches carry each row's document starts, found from the EOS id of the shards'
// msa-data metadata (data/document_starts.h; fails naming --pack_documents without one). Targets
// are the same either way: the target of a document's EOS is the next document's first token.
absl::StatusOr<std::unique_ptr<BatchSource>> make_shard_source(
    const std::string& glob, int64_t vocab_size, int64_t batch, int64_t seq_len,
    double val_fraction, uint64_t seed, const DataLayout& layout, bool validation,
    bool pack_documents = false);

// The msa-data metadata files of `shard_paths` (those of each shard's name that are msa-data's;
// data/shard.h, shard_metadata_path) agree with each other and with `seq_len`. Fails naming the
// files: when they disagree on the tokenizer (its fingerprint; its description in files from
// before it), or synthetic shards (their own vocabulary) stand beside text shards: shards of two
// tokenizers were trained as one vocabulary without a word; and when msa-data synthetic shards
// hold samples of another length than `seq_len`: each window is one sample only at their own
// length. Files not written by msa-data are not compared. make_shard_source checks it, and
// msa-eval --data.
absl::Status check_shard_metadata(const std::vector<std::string>& shard_paths, int64_t seq_len);

// A metadata file's text without the fields that say where inputs were read from
// (tokenizer_path, inputs[].path); the text itself when it is not a JSON object.
std::string metadata_content(const std::string& text);
// Whether a checkpoint's recorded data_metadata `was` and this run's `now` are the same data: by
// content hash, or, for checkpoints from before it (a bare hash of the whole files), by that.
bool same_data_metadata(const std::string& was, const std::string& now);

// A synthetic retrieval task (data/synthetic.h), generated on the fly: sample n of the run is
// make_synthetic_sample(config, n). The validation source draws from a disjoint seed.
absl::StatusOr<std::unique_ptr<BatchSource>> make_synthetic_source(
    const std::string& task, int64_t vocab_size, int64_t batch, int64_t seq_len, int pairs,
    double depth, uint64_t seed, const DataLayout& layout, bool validation);

// Context parallelism: `inner`'s batches [batch, T] cut to this cp rank's shard of every sequence,
// tokens and targets at the positions of cp_token_chunks (model/context_parallel.h: contiguous
// [cp_rank T/cp, (cp_rank + 1) T/cp), or the zig-zag pair of half-shards), with Batch::chunks
// saying where. The cp ranks of one data-parallel replica pass the same inner source, so they cut
// the same windows. get() fails (MSA_CHECK) when T is not a multiple of cp_size (2 cp_size
// with zig-zag). cp_size 1:
// `inner` itself.
std::unique_ptr<BatchSource> make_context_shard_source(std::unique_ptr<BatchSource> inner,
                                                       int cp_rank, int cp_size,
                                                       bool zigzag = false);

// A fixed pseudo-random sequence of `period` tokens repeated over the context: a model that learns
// it predicts every token after the first period exactly (the foundation's learning test). Row r
// of the global batch (this rank's and micro-batch's rows placed by `layout`) starts at phase
// 7 r; every step reads the same batch.
std::unique_ptr<BatchSource> make_repeating_source(int64_t vocab_size, int64_t batch,
                                                   int64_t seq_len, int64_t period, uint64_t seed,
                                                   const DataLayout& layout = {});

}  // namespace msa
