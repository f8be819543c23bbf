#include "launch/eval_report.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "launch/eval_position_report.h"

namespace msa {
namespace {

const EvalCell& cell(const EvalReport& r, size_t li, size_t di) {
  return r.cells[li * r.depths.size() + di];
}

// A recall column of each MSA layer, named "<table> L<l>" in the table, "<markdown> L<l>" in
// Markdown and "<csv>_layer<l>" in the CSV.
struct RecallColumn {
  std::vector<double> EvalCell::*values;  // per MSA layer
  const char* table;
  const char* markdown;
  const char* csv;
};

// Per MSA layer, in this order: with strided_recall the index recall, block recall, ceiling and
// max-pool ceiling, then with answer_recall the first three at the answer positions.
std::vector<RecallColumn> recall_columns(const EvalReport& r) {
  std::vector<RecallColumn> columns;
  if (r.strided_recall)
    columns = {
        {&EvalCell::index_recall, "recall", "recall", "recall"},
        {&EvalCell::block_recall, "block", "block", "block_recall"},
        {&EvalCell::index_recall_ceiling, "recall ceiling", "recall ceiling", "recall_ceiling"},
        {&EvalCell::max_pool_recall_ceiling, "max-pool", "max-pool ceiling",
         "max_pool_recall_ceiling"},
    };
  if (r.answer_recall)
    columns.insert(
        columns.end(),
        {{&EvalCell::answer_index_recall, "answer", "answer recall", "answer_recall"},
         {&EvalCell::answer_block_recall, "ans.block", "answer block", "answer_block_recall"},
         {&EvalCell::answer_index_recall_ceiling, "ans.ceiling", "answer ceiling",
          "answer_recall_ceiling"}});
  return columns;
}

double at(const std::vector<double>& v, size_t l) { return l < v.size() ? v[l] : 0.0; }

// Mean recall `values` of MSA layer `l` over the depths of length row `li`.
double row_recall(const EvalReport& r, size_t li, size_t l, std::vector<double> EvalCell::*values) {
  double sum = 0;
  for (size_t di = 0; di < r.depths.size(); ++di) sum += at(cell(r, li, di).*values, l);
  return sum / static_cast<double>(r.depths.size());
}

double row_accuracy(const EvalReport& r, size_t li) {
  double correct = 0, answers = 0;
  for (size_t di = 0; di < r.depths.size(); ++di) {
    correct += cell(r, li, di).accuracy * cell(r, li, di).answers;
    answers += cell(r, li, di).answers;
  }
  return answers > 0 ? correct / answers : 0;
}

}  // namespace

std::string format_report_table(const EvalReport& r) {
  const std::vector<RecallColumn> columns = recall_columns(r);
  std::string out = r.title + "\n";
  out += absl::StrFormat("%8s", "length");
  for (double d : r.depths) out += absl::StrFormat(" | depth %4.2f", d);
  out += " |  all ";
  std::vector<int> widths;  // each recall column's value is as wide as its name
  for (int l : r.msa_layers)
    for (const RecallColumn& c : columns) {
      const std::string name = absl::StrFormat("%s L%d", c.table, l);
      out += " | " + name;
      widths.push_back(static_cast<int>(name.size()));
    }
  out += "\n";
  for (size_t li = 0; li < r.lengths.size(); ++li) {
    out += absl::StrFormat("%8d", r.lengths[li]);
    for (size_t di = 0; di < r.depths.size(); ++di)
      out += absl::StrFormat(" | %9.1f%%", 100 * cell(r, li, di).accuracy);
    out += absl::StrFormat(" | %5.1f%%", 100 * row_accuracy(r, li));
    size_t w = 0;
    for (size_t l = 0; l < r.msa_layers.size(); ++l)
      for (const RecallColumn& c : columns)
        out += absl::StrFormat(" | %*.3f", widths[w++], row_recall(r, li, l, c.values));
    out += "\n";
  }
  return out;
}

std::string format_report_markdown(const EvalReport& r) {
  const std::vector<RecallColumn> columns = recall_columns(r);
  std::string out =
      "### " + r.title +
      "\n\nRetrieval accuracy by context length (rows) and depth of the facts (columns)";
  // What each recall column measures, the strided measures first (the answer columns are the
  // first three of them).
  const std::vector<std::string> measures = {
      "the index recall (the share of the dense attention mass inside the selected blocks)",
      "the block recall (the share of the attention's own top-k blocks that the selector picked)",
      "the recall ceiling (the share of the mass inside those top-k blocks: the most index recall "
      "any k blocks keep)",
      "the max-pool ceiling (the index recall of the paper's rule, blocks ranked by their largest "
      "token score, fed perfect scores: the attention probabilities themselves)"};
  // "a, b and c" of the first n.
  auto listed = [&](size_t n) {
    std::string text = measures[0];
    for (size_t i = 1; i < n; ++i) text += (i + 1 == n ? " and " : ", ") + measures[i];
    return text;
  };
  if (!r.msa_layers.empty() && r.strided_recall)
    out += ", and per MSA layer (means over depths) " + listed(4);
  if (!r.msa_layers.empty() && r.strided_recall && r.answer_recall)
    out +=
        ", the four averaged over sampled query positions (mostly filler tokens), and the first "
        "three measured at the answer positions only (the queries whose attention decides the "
        "task: answer recall, answer block recall, answer ceiling)";
  if (!r.msa_layers.empty() && !r.strided_recall && r.answer_recall)
    out +=
        ", and per MSA layer (means over depths), measured at the answer positions (the queries "
        "whose attention decides the task), " +
        listed(3);
  out += ".\n\n| length |";
  for (double d : r.depths) out += absl::StrFormat(" depth %.2f |", d);
  out += " all |";
  for (int l : r.msa_layers)
    for (const RecallColumn& c : columns) out += absl::StrFormat(" %s L%d |", c.markdown, l);
  out += "\n|---|";
  for (size_t i = 0; i < r.depths.size() + 1 + columns.size() * r.msa_layers.size(); ++i)
    out += "---|";
  out += "\n";
  for (size_t li = 0; li < r.lengths.size(); ++li) {
    out += absl::StrFormat("| %d |", r.lengths[li]);
    for (size_t di = 0; di < r.depths.size(); ++di)
      out += absl::StrFormat(" %.1f%% |", 100 * cell(r, li, di).accuracy);
    out += absl::StrFormat(" %.1f%% |", 100 * row_accuracy(r, li));
    for (size_t l = 0; l < r.msa_layers.size(); ++l)
      for (const RecallColumn& c : columns)
        out += absl::StrFormat(" %.3f |", row_recall(r, li, l, c.values));
    out += "\n";
  }
  return out;
}

std::string format_report_csv(const EvalReport& r) {
  const std::vector<RecallColumn> columns = recall_columns(r);
  std::string out = "length,depth,accuracy,answers";
  for (int l : r.msa_layers)
    for (const RecallColumn& c : columns) out += absl::StrFormat(",%s_layer%d", c.csv, l);
  out += "\n";
  for (const EvalCell& cell : r.cells) {
    out += absl::StrFormat("%d,%g,%.6f,%d", cell.length, cell.depth, cell.accuracy, cell.answers);
    for (size_t l = 0; l < r.msa_layers.size(); ++l)
      for (const RecallColumn& c : columns) out += absl::StrFormat(",%.6f", at(cell.*c.values, l));
    out += "\n";
  }
  return out;
}

absl::Status write_report(const EvalReport& report, const std::string& dir,
                          const std::string& stem) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --out_dir: cannot create '%s'", dir));
  for (const auto& [ext, text] :
       {std::pair<std::string, std::string>{"csv", format_report_csv(report)},
        {"md", format_report_markdown(report)}}) {
    // Checked to the close: a full disk was "wrote ..." and exit 0.
    MSA_RETURN_IF_ERROR(write_text_file(dir + "/" + stem + "." + ext, text, "out_dir"));
  }
  return absl::OkStatus();
}

}  // namespace msa
