// Retrieval accuracy on the synthetic long-context tasks (data/synthetic.h): the fraction of
// answer positions whose argmax prediction is the right answer token, with each MSA layer's index
// recall, block recall and index recall ceiling on the same sequences.
#pragma once

#include <cstdint>
#include <vector>

#include "data/synthetic.h"
#include "model/transformer.h"

namespace msa {

struct RetrievalResult {
  double accuracy = 0;  // correct answers / answers
  int64_t answers = 0;
  double answer_loss = 0;            // mean cross entropy at the answer positions
  std::vector<double> index_recall;  // per MSA layer (empty for dense models): mass kept
  std::vector<double> block_recall;  // per MSA layer (empty for dense models): the paper's metric
  // Per MSA layer (empty for dense models): the most index recall any k blocks could keep.
  std::vector<double> index_recall_ceiling;
  // Per MSA layer (empty for dense models): the index recall of the paper's max-pooling rule fed
  // perfect token scores (kernels/msa.h OracleRecall); between the recall and the ceiling.
  std::vector<double> max_pool_recall_ceiling;
  // The first three measured at the answer positions only (the queries whose attention decides
  // the task), a mean over every answer of the samples: per MSA layer, empty when not measured.
  std::vector<double> answer_index_recall;
  std::vector<double> answer_block_recall;
  std::vector<double> answer_index_recall_ceiling;
  // Fact-block hit rate at the answer positions: the fraction of (answer, KV group) rows whose
  // selection holds the block of the fact the answer asks about (per MSA layer; with
  // answer_recall). 1.0: the selector always picks the block the task needs.
  std::vector<double> answer_fact_selected;
};

// Samples first_sample .. first_sample + samples - 1 of `task`, in batches of `batch`.
// recall_stride > 0 also measures index recall, block recall and the index recall ceiling
// (one query position per recall_stride: strided_recall_queries); answer_recall measures the three
// at the answer positions. They are measured on the selection in either mode.
RetrievalResult evaluate_retrieval(Transformer& model, const SyntheticConfig& task, int64_t samples,
                                   int64_t batch, MsaMode mode, int64_t recall_stride,
                                   bool answer_recall, uint64_t first_sample = 0);

}  // namespace msa
