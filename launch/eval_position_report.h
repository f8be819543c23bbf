// msa-eval --data's report: per position bucket the tokens counted and, per checkpoint side by
// side, the mean next-token loss and the perplexity exp(loss); as a Markdown table, a CSV and a
// loss-vs-position line chart.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "launch/eval_perplexity.h"
#include "launch/png_plot.h"

namespace msa {

struct PositionReport {
  std::string title;                 // e.g. the windows and the data
  int64_t seq_len = 0;               // the last bucket ends here
  std::vector<int64_t> starts;       // bucket starts, as parse_position_buckets returns them
  std::vector<std::string> labels;   // per checkpoint
  std::vector<PositionLoss> losses;  // per checkpoint, over the same windows
};

// "0-1K", "1K-2K", "1536-2K": bucket [begin, end) with multiples of 1024 as K (of 2^20 as M).
std::string position_range_label(int64_t begin, int64_t end);

// | position | tokens | <label> loss | <label> ppl | ... |, one row per bucket and a last row
// "all" over every token. Loss to 4 decimals, perplexity to 3.
std::string format_position_markdown(const PositionReport& report);

// Header model,bucket,position_begin,position_end,tokens,mean_loss,perplexity; per checkpoint one
// row per bucket (bucket: its range label) and a row "all" over [0, seq_len). Full precision.
std::string format_position_csv(const PositionReport& report);

// Mean loss against the bucket's middle position (log2 x axis), one line per checkpoint.
LinePlot position_loss_plot(const PositionReport& report);

// Writes `text` to `path`; an error names `flag` and the path.
absl::Status write_text_file(const std::string& path, const std::string& text,
                             const std::string& flag);

}  // namespace msa
