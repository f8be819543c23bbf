// msa-eval's report: per MSA layer the index recall (the headline) and the block recall (the
// paper's metric) sit side by side in the table, the Markdown and the CSV.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/eval_report.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

EvalReport two_layer_report() {
  EvalReport r;
  r.title = "ckpt.h5: kv-recall, sparse attention";
  r.lengths = {256};
  r.depths = {0.0, 1.0};
  r.msa_layers = {0, 2};
  r.cells = {{256, 0.0, 0.5, 8, {0.9, 0.7}, {0.8, 0.6}},
             {256, 1.0, 0.75, 8, {0.7, 0.5}, {0.6, 0.4}}};
  return r;
}

TEST(EvalReportTest, TableShowsIndexAndBlockRecallPerLayer) {
  const std::string t = format_report_table(two_layer_report());
  EXPECT_THAT(t, HasSubstr("recall L0 | block L0 | recall L2 | block L2"));
  // Means over the depths: index recall L0 0.8, block L0 0.7, index L2 0.6, block L2 0.5.
  EXPECT_THAT(t, HasSubstr("0.800 |    0.700 |     0.600 |    0.500"));
  EXPECT_THAT(t, HasSubstr("62.5%"));
}

TEST(EvalReportTest, MarkdownAndCsvCarryBothRecalls) {
  const EvalReport r = two_layer_report();
  const std::string md = format_report_markdown(r);
  EXPECT_THAT(md, HasSubstr("| recall L0 | block L0 | recall L2 | block L2 |"));
  EXPECT_THAT(md, HasSubstr("| 0.800 | 0.700 | 0.600 | 0.500 |"));
  EXPECT_THAT(md, HasSubstr("block recall"));
  const std::string csv = format_report_csv(r);
  EXPECT_THAT(csv, HasSubstr("length,depth,accuracy,answers,recall_layer0,block_recall_layer0,"
                             "recall_layer2,block_recall_layer2\n"));
  EXPECT_THAT(csv, HasSubstr("256,0,0.500000,8,0.900000,0.800000,0.700000,0.600000\n"));
}

}  // namespace
}  // namespace msa
