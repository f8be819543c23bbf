// msa-eval's reports. Retrieval: per MSA layer the index recall (the headline), the block recall
// (the paper's metric), the recall ceiling (the most index recall k blocks keep) and the max-pool
// ceiling (the paper's rule fed perfect scores) sit side by side in the table, the Markdown and
// the CSV, followed (answer_recall) by the first three at the answer positions. Loss by
// position (--data): bucket parsing and defaults, the window spread, the table and the CSV.
#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/eval_perplexity.h"
#include "launch/eval_position_report.h"
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
  // No answer-position recalls: their three fields empty.
  r.cells = {{256, 0.0, 0.5, 8, {0.9, 0.7}, {0.8, 0.6}, {0.95, 0.75}, {0.92, 0.72}, {}, {}, {}},
             {256, 1.0, 0.75, 8, {0.7, 0.5}, {0.6, 0.4}, {0.85, 0.65}, {0.8, 0.58}, {}, {}, {}}};
  return r;
}

// The report with answer-position recalls in both cells: answer recall L0 0.95 / 0.85, L2 0.85 /
// 0.55 (depth 0 / 1); answer block 0.75 / 0.25, 0.65 / 0.45; answer ceiling 0.97 / 0.93, 0.9 / 0.6.
EvalReport with_answer_recalls(EvalReport r) {
  r.answer_recall = true;
  r.cells[0].answer_index_recall = {0.95, 0.85};
  r.cells[0].answer_block_recall = {0.75, 0.65};
  r.cells[0].answer_index_recall_ceiling = {0.97, 0.9};
  r.cells[1].answer_index_recall = {0.85, 0.55};
  r.cells[1].answer_block_recall = {0.25, 0.45};
  r.cells[1].answer_index_recall_ceiling = {0.93, 0.6};
  return r;
}

TEST(EvalReportTest, TableShowsIndexAndBlockRecallAndCeilingPerLayer) {
  const std::string t = format_report_table(two_layer_report());
  EXPECT_THAT(t, HasSubstr("recall L0 | block L0 | recall ceiling L0 | max-pool L0 | recall L2 | "
                           "block L2 | recall ceiling L2 | max-pool L2\n"));
  // Means over the depths: index recall L0 0.8, block L0 0.7, ceiling L0 0.9, max-pool L0 0.86,
  // index L2 0.6, block L2 0.5, ceiling L2 0.7, max-pool L2 0.65; each value as wide as its
  // column's name.
  EXPECT_THAT(t, HasSubstr("62.5% |     0.800 |    0.700 |             0.900 |       0.860 |     "
                           "0.600 |    0.500 |             0.700 |       0.650\n"));
}

TEST(EvalReportTest, MarkdownAndCsvCarryBothRecallsAndTheCeiling) {
  const EvalReport r = two_layer_report();
  const std::string md = format_report_markdown(r);
  EXPECT_THAT(md, HasSubstr("| recall L0 | block L0 | recall ceiling L0 | max-pool ceiling L0 | "
                            "recall L2 | block L2 | recall ceiling L2 | max-pool ceiling L2 |\n"
                            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"));
  EXPECT_THAT(md, HasSubstr("| 0.800 | 0.700 | 0.900 | 0.860 | 0.600 | 0.500 | 0.700 | 0.650 |"));
  EXPECT_THAT(md, HasSubstr("block recall"));
  EXPECT_THAT(md, HasSubstr("recall ceiling (the share of the mass inside those top-k blocks"));
  EXPECT_THAT(md, HasSubstr("max-pool ceiling (the index recall of the paper's rule"));
  const std::string csv = format_report_csv(r);
  EXPECT_THAT(csv, HasSubstr("length,depth,accuracy,answers,recall_layer0,block_recall_layer0,"
                             "recall_ceiling_layer0,max_pool_recall_ceiling_layer0,recall_layer2,"
                             "block_recall_layer2,recall_ceiling_layer2,"
                             "max_pool_recall_ceiling_layer2\n"));
  EXPECT_THAT(csv, HasSubstr("256,0,0.500000,8,0.900000,0.800000,0.950000,0.920000,0.700000,"
                             "0.600000,0.750000,0.720000\n"));
}

// With answer_recall, each MSA layer's recall columns are followed by the first three measured at
// the answer positions (means over the depths); without it the report is as before.
TEST(EvalReportTest, AnswerRecallColumnsFollowEachLayersRecalls) {
  EvalReport r = with_answer_recalls(two_layer_report());
  const std::string t = format_report_table(r);
  EXPECT_THAT(t, HasSubstr("recall L0 | block L0 | recall ceiling L0 | max-pool L0 | answer L0 | "
                           "ans.block L0 | ans.ceiling L0 | recall L2 | block L2 | recall ceiling "
                           "L2 | max-pool L2 | answer L2 | ans.block L2 | ans.ceiling L2\n"));
  // Means over the depths: answer L0 0.9, ans.block L0 0.5, ans.ceiling L0 0.95, answer L2 0.7,
  // ans.block L2 0.55, ans.ceiling L2 0.75.
  EXPECT_THAT(t, HasSubstr("0.800 |    0.700 |             0.900 |       0.860 |     0.900 |      "
                           "  0.500 |          0.950 |     0.600 |    0.500 |             0.700 | "
                           "      0.650 |     0.700 |        0.550 |          0.750\n"));
  const std::string md = format_report_markdown(r);
  EXPECT_THAT(md,
              HasSubstr("| recall L0 | block L0 | recall ceiling L0 | max-pool ceiling L0 | answer "
                        "recall L0 | answer block L0 | answer ceiling L0 | recall L2 | block L2 | "
                        "recall ceiling L2 | max-pool ceiling L2 | answer recall L2 | answer "
                        "block L2 | answer ceiling L2 |\n|---|---|---|---|---|---|---|---|---|---|"
                        "---|---|---|---|---|---|---|---|\n"));
  EXPECT_THAT(md, HasSubstr("| 0.800 | 0.700 | 0.900 | 0.860 | 0.900 | 0.500 | 0.950 | 0.600 | "
                            "0.500 | 0.700 | 0.650 | 0.700 | 0.550 | 0.750 |"));
  EXPECT_THAT(md, HasSubstr("at the answer positions"));
  const std::string csv = format_report_csv(r);
  EXPECT_THAT(csv,
              HasSubstr("recall_layer0,block_recall_layer0,recall_ceiling_layer0,"
                        "max_pool_recall_ceiling_layer0,answer_recall_layer0,"
                        "answer_block_recall_layer0,answer_recall_ceiling_layer0,recall_layer2,"
                        "block_recall_layer2,recall_ceiling_layer2,"
                        "max_pool_recall_ceiling_layer2,answer_recall_layer2,"
                        "answer_block_recall_layer2,answer_recall_ceiling_layer2\n"));
  EXPECT_THAT(csv, HasSubstr("256,1,0.750000,8,0.700000,0.600000,0.850000,0.800000,0.850000,"
                             "0.250000,0.930000,0.500000,0.400000,0.650000,0.580000,0.550000,"
                             "0.450000,0.600000\n"));
  r.answer_recall = false;
  EXPECT_THAT(format_report_table(r), ::testing::Not(HasSubstr("ans.")));
  EXPECT_THAT(format_report_table(r), ::testing::Not(HasSubstr("answer")));
  EXPECT_THAT(format_report_csv(r), ::testing::Not(HasSubstr("answer_recall")));
}

// Without strided recalls (msa-eval --recall_stride=0) their four columns are left out, not
// printed as zeros; the answer-position columns stay.
TEST(EvalReportTest, UnmeasuredStridedRecallsHaveNoColumns) {
  EvalReport r = with_answer_recalls(two_layer_report());
  r.strided_recall = false;
  const std::string t = format_report_table(r);
  EXPECT_THAT(t, HasSubstr("|  all  | answer L0 | ans.block L0 | ans.ceiling L0 | answer L2 | "
                           "ans.block L2 | ans.ceiling L2\n"));
  EXPECT_THAT(t, HasSubstr("62.5% |     0.900 |        0.500 |          0.950 |     0.700 |"));
  for (const std::string& text : {t, format_report_markdown(r), format_report_csv(r)}) {
    EXPECT_THAT(text, ::testing::Not(HasSubstr("| recall L0"))) << text;
    EXPECT_THAT(text, ::testing::Not(HasSubstr("block L0 | recall ceiling"))) << text;
    EXPECT_THAT(text, ::testing::Not(HasSubstr("max-pool"))) << text;
    EXPECT_THAT(text, ::testing::Not(HasSubstr(",recall_layer0"))) << text;
  }
  EXPECT_THAT(format_report_markdown(r), HasSubstr("measured at the answer positions"));
  EXPECT_THAT(format_report_csv(r),
              HasSubstr("length,depth,accuracy,answers,answer_recall_layer0,"
                        "answer_block_recall_layer0,answer_recall_ceiling_layer0,"
                        "answer_recall_layer2,answer_block_recall_layer2,"
                        "answer_recall_ceiling_layer2\n"));
}

TEST(EvalPositionTest, DefaultBucketsDoubleFrom1KOrAQuarterOfShortWindows) {
  EXPECT_EQ(*parse_position_buckets("", 8192), (std::vector<int64_t>{0, 1024, 2048, 4096}));
  EXPECT_EQ(*parse_position_buckets("", 10000), (std::vector<int64_t>{0, 1024, 2048, 4096, 8192}));
  EXPECT_EQ(*parse_position_buckets("", 2048), (std::vector<int64_t>{0, 512, 1024}));
  EXPECT_EQ(*parse_position_buckets("", 64), (std::vector<int64_t>{0, 16, 32}));
  EXPECT_EQ(*parse_position_buckets("", 1), (std::vector<int64_t>{0}));
  EXPECT_EQ(*parse_position_buckets("0,1024,4096,16384", 32768),
            (std::vector<int64_t>{0, 1024, 4096, 16384}));
}

TEST(EvalPositionTest, BadBucketsNameTheFlag) {
  for (const char* text : {"0,0", "0,10,5", "5,10", "0,100", "0,,8", "0,a", "-1,0"}) {
    const auto r = parse_position_buckets(text, 100);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("invalid --position_buckets: "))
        << text;
  }
}

TEST(EvalPositionTest, WindowsAreDistinctEvenlySpreadAndSeeded) {
  const std::vector<int64_t> w = *select_eval_windows(100, 10, 7);
  ASSERT_EQ(w.size(), 10u);
  for (size_t i = 1; i < w.size(); ++i) EXPECT_EQ(w[i] - w[i - 1], 10) << i;
  EXPECT_LT(w[0], 10);
  EXPECT_EQ(*select_eval_windows(5, 5, 7), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  const std::vector<int64_t> odd = *select_eval_windows(7, 3, 1);
  EXPECT_TRUE(odd[0] < odd[1] && odd[1] < odd[2] && odd[2] < 7);
  bool moved = false;  // another seed shifts the grid (for some seed of a few)
  for (uint64_t seed = 1; seed < 6; ++seed) moved |= *select_eval_windows(100, 10, seed) != w;
  EXPECT_TRUE(moved);
  for (int64_t bad : {0, 6}) {
    const auto r = select_eval_windows(5, bad, 7);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("invalid --eval_windows"));
  }
}

PositionReport two_model_report() {
  PositionReport r;
  r.title = "Loss by position: 2 windows of 3072 tokens";
  r.seq_len = 3072;
  r.starts = {0, 1024, 1536};
  r.labels = {"dense", "msa"};
  r.losses = {{{2048.0, 1024.0, 3072.0}, {2048, 1024, 3072}},
              {{1024.0, 512.0, 1536.0}, {2048, 1024, 3072}}};
  return r;
}

TEST(EvalPositionTest, MarkdownHasOneRowPerBucketAndAnAllRow) {
  const std::string md = format_position_markdown(two_model_report());
  EXPECT_THAT(md, HasSubstr("| position | tokens | dense loss | dense ppl | msa loss | msa ppl |"));
  EXPECT_THAT(md, HasSubstr("| 0-1K | 2048 | 1.0000 | 2.718 | 0.5000 | 1.649 |"));
  EXPECT_THAT(md, HasSubstr("| 1K-1536 | 1024 | 1.0000 | 2.718 | 0.5000 | 1.649 |"));
  EXPECT_THAT(md, HasSubstr("| 1536-3K | 3072 |"));
  EXPECT_THAT(md, HasSubstr("| all | 6144 | 1.0000 | 2.718 | 0.5000 | 1.649 |"));
  EXPECT_EQ(position_range_label(0, 1 << 20), "0-1M");
}

TEST(EvalPositionTest, CsvHasARowPerModelAndBucket) {
  const std::string csv = format_position_csv(two_model_report());
  EXPECT_THAT(csv, HasSubstr("model,bucket,position_begin,position_end,tokens,mean_loss,"
                             "perplexity\ndense,0-1K,0,1024,2048,1,2.71828183\n"));
  EXPECT_THAT(csv, HasSubstr("msa,1536-3K,1536,3072,3072,0.5,1.64872127\n"));
  EXPECT_THAT(csv, HasSubstr("msa,all,0,3072,6144,0.5,1.64872127\n"));
}

// A bucket no document reaches (packed documents) has no loss: it printed 0.0000 and a
// perplexity of 1.000, a perfect score.
TEST(EvalPositionTest, EmptyBucketsShowNoLoss) {
  PositionReport r = two_model_report();
  r.losses[1].loss_sum[2] = 0;
  r.losses[1].tokens[2] = 0;
  const std::string md = format_position_markdown(r);
  EXPECT_THAT(md, HasSubstr("| 1536-3K | 3072 / 0 | 1.0000 | 2.718 | - | - |"));
  const std::string csv = format_position_csv(r);
  EXPECT_THAT(csv, HasSubstr("msa,1536-3K,1536,3072,0,,\n"));
}

TEST(EvalPositionTest, PlotHasALinePerModelAtBucketMiddles) {
  const LinePlot plot = position_loss_plot(two_model_report());
  ASSERT_EQ(plot.series.size(), 2u);
  EXPECT_TRUE(plot.log2_x);
  EXPECT_EQ(plot.series[1].label, "msa");
  EXPECT_EQ(plot.series[0].x, (std::vector<double>{512, 1280, 2304}));
  EXPECT_EQ(plot.series[1].y, (std::vector<double>{0.5, 0.5, 0.5}));
}

}  // namespace
}  // namespace msa
