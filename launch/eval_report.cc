#include "launch/eval_report.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>

#include "absl/strings/str_format.h"

namespace msa {
namespace {

const EvalCell& cell(const EvalReport& r, size_t li, size_t di) {
  return r.cells[li * r.depths.size() + di];
}

// Which recall of a cell: index or block recall, over the sampled queries or at the answers.
enum class Recall { kIndex, kBlock, kAnswerIndex, kAnswerBlock };

const std::vector<double>& recall_of(const EvalCell& c, Recall which) {
  switch (which) {
    case Recall::kIndex:
      return c.index_recall;
    case Recall::kBlock:
      return c.block_recall;
    case Recall::kAnswerIndex:
      return c.answer_index_recall;
    case Recall::kAnswerBlock:
      break;
  }
  return c.answer_block_recall;
}

// Mean recall `which` of MSA layer `l` over the depths of length row `li`.
double row_recall(const EvalReport& r, size_t li, size_t l, Recall which) {
  double sum = 0;
  for (size_t di = 0; di < r.depths.size(); ++di) {
    const std::vector<double>& v = recall_of(cell(r, li, di), which);
    sum += l < v.size() ? v[l] : 0.0;
  }
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
  std::string out = r.title + "\n";
  out += absl::StrFormat("%8s", "length");
  for (double d : r.depths) out += absl::StrFormat(" | depth %4.2f", d);
  out += " |  all ";
  for (int l : r.msa_layers) {
    out += absl::StrFormat(" | recall L%d | block L%d", l, l);
    if (r.answer_recall) out += absl::StrFormat(" | answer L%d | ans.block L%d", l, l);
  }
  out += "\n";
  for (size_t li = 0; li < r.lengths.size(); ++li) {
    out += absl::StrFormat("%8d", r.lengths[li]);
    for (size_t di = 0; di < r.depths.size(); ++di)
      out += absl::StrFormat(" | %9.1f%%", 100 * cell(r, li, di).accuracy);
    out += absl::StrFormat(" | %5.1f%%", 100 * row_accuracy(r, li));
    for (size_t l = 0; l < r.msa_layers.size(); ++l) {
      out += absl::StrFormat(" | %9.3f | %8.3f", row_recall(r, li, l, Recall::kIndex),
                             row_recall(r, li, l, Recall::kBlock));
      if (r.answer_recall)
        out += absl::StrFormat(" | %9.3f | %12.3f", row_recall(r, li, l, Recall::kAnswerIndex),
                               row_recall(r, li, l, Recall::kAnswerBlock));
    }
    out += "\n";
  }
  return out;
}

std::string format_report_markdown(const EvalReport& r) {
  std::string out =
      "### " + r.title +
      "\n\nRetrieval accuracy by context length (rows) and depth of the facts (columns)";
  if (!r.msa_layers.empty())
    out +=
        ", and per MSA layer (means over depths) the index recall (the share of the dense "
        "attention mass inside the selected blocks) and the block recall (the share of the "
        "attention's own top-k blocks that the selector picked)";
  if (!r.msa_layers.empty() && r.answer_recall)
    out +=
        ", both averaged over sampled query positions (mostly filler tokens), and the same two "
        "measured at the answer positions only (the queries whose attention decides the task: "
        "answer recall, answer block recall)";
  out += ".\n\n| length |";
  for (double d : r.depths) out += absl::StrFormat(" depth %.2f |", d);
  out += " all |";
  for (int l : r.msa_layers) {
    out += absl::StrFormat(" recall L%d | block L%d |", l, l);
    if (r.answer_recall) out += absl::StrFormat(" answer recall L%d | answer block L%d |", l, l);
  }
  out += "\n|---|";
  const size_t per_layer = r.answer_recall ? 4 : 2;
  for (size_t i = 0; i < r.depths.size() + 1 + per_layer * r.msa_layers.size(); ++i) out += "---|";
  out += "\n";
  for (size_t li = 0; li < r.lengths.size(); ++li) {
    out += absl::StrFormat("| %d |", r.lengths[li]);
    for (size_t di = 0; di < r.depths.size(); ++di)
      out += absl::StrFormat(" %.1f%% |", 100 * cell(r, li, di).accuracy);
    out += absl::StrFormat(" %.1f%% |", 100 * row_accuracy(r, li));
    for (size_t l = 0; l < r.msa_layers.size(); ++l) {
      out += absl::StrFormat(" %.3f | %.3f |", row_recall(r, li, l, Recall::kIndex),
                             row_recall(r, li, l, Recall::kBlock));
      if (r.answer_recall)
        out += absl::StrFormat(" %.3f | %.3f |", row_recall(r, li, l, Recall::kAnswerIndex),
                               row_recall(r, li, l, Recall::kAnswerBlock));
    }
    out += "\n";
  }
  return out;
}

std::string format_report_csv(const EvalReport& r) {
  std::string out = "length,depth,accuracy,answers";
  for (int l : r.msa_layers) {
    out += absl::StrFormat(",recall_layer%d,block_recall_layer%d", l, l);
    if (r.answer_recall)
      out += absl::StrFormat(",answer_recall_layer%d,answer_block_recall_layer%d", l, l);
  }
  out += "\n";
  for (const EvalCell& c : r.cells) {
    out += absl::StrFormat("%d,%g,%.6f,%d", c.length, c.depth, c.accuracy, c.answers);
    auto at = [](const std::vector<double>& v, size_t l) { return l < v.size() ? v[l] : 0.0; };
    for (size_t l = 0; l < r.msa_layers.size(); ++l) {
      out += absl::StrFormat(",%.6f,%.6f", at(c.index_recall, l), at(c.block_recall, l));
      if (r.answer_recall)
        out += absl::StrFormat(",%.6f,%.6f", at(c.answer_index_recall, l),
                               at(c.answer_block_recall, l));
    }
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
    const std::string path = dir + "/" + stem + "." + ext;
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) return absl::InternalError(absl::StrFormat("%s: cannot write", path));
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
  return absl::OkStatus();
}

}  // namespace msa
