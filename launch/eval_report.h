// The quality report of msa-eval: retrieval accuracy by context length and depth, index recall
// (the attention mass the selection keeps, the headline), block recall (the paper's metric) and
// the index recall ceiling (the most any k blocks keep) per MSA layer, printed as a table and
// written as CSV and Markdown.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace msa {

struct EvalCell {
  int64_t length = 0;
  double depth = 0;
  double accuracy = 0;
  int64_t answers = 0;
  std::vector<double> index_recall;          // per MSA layer
  std::vector<double> block_recall;          // per MSA layer
  std::vector<double> index_recall_ceiling;  // per MSA layer
  std::vector<double> max_pool_recall_ceiling;  // per MSA layer
  // Per MSA layer, with EvalReport::answer_recall: the first three at the answer positions only.
  std::vector<double> answer_index_recall;
  std::vector<double> answer_block_recall;
  std::vector<double> answer_index_recall_ceiling;
};

struct EvalReport {
  std::string title;  // e.g. the checkpoint and task
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  std::vector<EvalCell> cells;  // lengths x depths, row-major
  std::vector<int> msa_layers;  // layer index of each recall column
  bool answer_recall = false;   // cells hold the answer-position recalls: print their columns
  bool strided_recall = true;   // cells hold the strided recalls (false: not measured, no columns)
};

// The accuracy table (rows: lengths, columns: depths, then per MSA layer the means over the
// depths of the strided index recall, block recall, index recall ceiling and max-pool ceiling
// (with strided_recall), and with answer_recall the first three measured at the answer
// positions).
std::string format_report_table(const EvalReport& report);
std::string format_report_markdown(const EvalReport& report);
std::string format_report_csv(const EvalReport& report);
// Writes <dir>/<stem>.csv and <dir>/<stem>.md.
absl::Status write_report(const EvalReport& report, const std::string& dir,
                          const std::string& stem);

}  // namespace msa
