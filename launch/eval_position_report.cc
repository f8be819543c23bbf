#include "launch/eval_position_report.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace msa {
namespace {

std::string position_label(int64_t p) {
  if (p > 0 && p % (int64_t{1} << 20) == 0) return absl::StrFormat("%dM", p >> 20);
  if (p > 0 && p % 1024 == 0) return absl::StrFormat("%dK", p >> 10);
  return absl::StrFormat("%d", p);
}

int64_t bucket_end(const PositionReport& r, size_t b) {
  return b + 1 < r.starts.size() ? r.starts[b + 1] : r.seq_len;
}

// A CSV field, quoted when it holds a separator or a quote.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

std::string position_range_label(int64_t begin, int64_t end) {
  return position_label(begin) + "-" + position_label(end);
}

std::string format_position_markdown(const PositionReport& r) {
  std::string out = "### " + r.title + "\n\n| position | tokens |";
  for (const std::string& label : r.labels) out += " " + label + " loss | " + label + " ppl |";
  out += "\n|---|---:|";
  for (size_t m = 0; m < r.labels.size(); ++m) out += "---:|---:|";
  out += "\n";
  if (r.losses.empty()) return out;
  // The models count the same tokens unless some evaluate packed documents (positions within
  // each document) and others whole windows: then the cell lists each model's count.
  auto token_cell = [&](auto count) {
    std::vector<int64_t> counts;
    for (const PositionLoss& l : r.losses) counts.push_back(count(l));
    bool same = true;
    for (int64_t c : counts) same = same && c == counts[0];
    return same ? absl::StrCat(counts[0]) : absl::StrJoin(counts, " / ");
  };
  for (size_t b = 0; b < r.starts.size(); ++b) {
    out += absl::StrFormat("| %s | %s |", position_range_label(r.starts[b], bucket_end(r, b)),
                           token_cell([b](const PositionLoss& l) { return l.tokens[b]; }));
    // A bucket no document reaches (packed documents) has no loss: "-", not a perfect 0.
    for (const PositionLoss& l : r.losses)
      out += l.tokens[b] > 0 ? absl::StrFormat(" %.4f | %.3f |", l.mean(b), std::exp(l.mean(b)))
                             : std::string(" - | - |");
    out += "\n";
  }
  out += absl::StrFormat("| all | %s |",
                         token_cell([](const PositionLoss& l) { return l.total_tokens(); }));
  for (const PositionLoss& l : r.losses)
    out += absl::StrFormat(" %.4f | %.3f |", l.overall_mean(), std::exp(l.overall_mean()));
  return out + "\n";
}

std::string format_position_csv(const PositionReport& r) {
  std::string out = "model,bucket,position_begin,position_end,tokens,mean_loss,perplexity\n";
  for (size_t m = 0; m < r.losses.size(); ++m) {
    const PositionLoss& l = r.losses[m];
    const std::string label = csv_field(m < r.labels.size() ? r.labels[m] : "");
    for (size_t b = 0; b < r.starts.size(); ++b)
      out += absl::StrFormat(
          "%s,%s,%d,%d,%d,%s\n", label, position_range_label(r.starts[b], bucket_end(r, b)),
          r.starts[b], bucket_end(r, b), l.tokens[b],
          l.tokens[b] > 0 ? absl::StrFormat("%.9g,%.9g", l.mean(b), std::exp(l.mean(b))) : ",");
    out += absl::StrFormat("%s,all,0,%d,%d,%.9g,%.9g\n", label, r.seq_len, l.total_tokens(),
                           l.overall_mean(), std::exp(l.overall_mean()));
  }
  return out;
}

LinePlot position_loss_plot(const PositionReport& r) {
  LinePlot plot;
  plot.title = r.title;
  plot.x_label = "position: tokens before it that the model sees (bucket middle, log2)";
  plot.y_label = "mean loss (nats)";
  plot.log2_x = true;
  for (size_t m = 0; m < r.losses.size(); ++m) {
    PlotSeries series;
    series.label = m < r.labels.size() ? r.labels[m] : "";
    for (size_t b = 0; b < r.starts.size(); ++b) {
      if (r.losses[m].tokens[b] == 0) continue;
      series.x.push_back(0.5 * static_cast<double>(r.starts[b] + bucket_end(r, b)));
      series.y.push_back(r.losses[m].mean(b));
    }
    plot.series.push_back(series);
  }
  return plot;
}

absl::Status write_text_file(const std::string& path, const std::string& text,
                             const std::string& flag) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --%s: cannot write '%s'", flag, path));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !ok)
    return absl::InternalError(absl::StrFormat("--%s: writing '%s' failed", flag, path));
  return absl::OkStatus();
}

}  // namespace msa
