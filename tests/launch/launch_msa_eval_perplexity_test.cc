// msa-eval --data: the validation loss by position bucket, checked against an independent
// computation (the model's logits, log-softmax in double, bucketed here) on shards whose windows
// are all evaluated; the table, the CSV and the PNG agree; bad inputs name their flag or file.
#include <png.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "data/shard.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/document_segments.h"
#include "model/parameters.h"
#include "model/transformer.h"
#include "tests/testing/command.h"
#include "train/checkpoint.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kVocab = 96, kSeqLen = 64;

struct CommandResult {
  int exit_code;
  std::string output;
};

CommandResult run_eval(const std::string& args) {
  FILE* pipe = popen(
      ("timeout 60 " + msa::test::program_path("msa-eval") + " --device=cpu " + args + " 2>&1")
          .c_str(),
      "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  return {WEXITSTATUS(pclose(pipe)), out};
}

// Per process: ctest runs this binary's tests as concurrent processes.
std::string fresh_dir(const std::string& name) {
  const std::string dir =
      std::string(::testing::TempDir()) + "/" + name + "_" + std::to_string(getpid());
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

ModelConfig tiny_config(bool with_msa) {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 64;
  c.msa.block_size = 8;
  c.msa.topk = 2;
  c.msa.index_dim = 8;
  if (with_msa) c.attention = {AttentionKind::kMsa, AttentionKind::kDense};
  return c;
}

// A checkpoint of freshly initialized weights that records a training --seq_len of 64 (and
// --pack_documents when `packed`).
std::string write_checkpoint(const std::string& dir, const std::string& name, bool with_msa,
                             uint64_t seed, bool packed = false) {
  Checkpoint ckpt;
  ckpt.config = tiny_config(with_msa);
  ckpt.run_json = packed ? R"({"seq_len": 64, "pack_documents": true})" : R"({"seq_len": 64})";
  ParameterSet params =
      ParameterSet::allocate(model_param_specs(ckpt.config), DType::kF32, Device::kCPU);
  params.initialize(seed);
  for (const Parameter& p : params.all()) ckpt.params[p.spec.name] = p.value;
  const std::string path = dir + "/" + name;
  const absl::Status s = save_checkpoint(path, ckpt);
  EXPECT_TRUE(s.ok()) << s;
  return path;
}

// Tokens with some structure (a repeated ramp plus noise), so the loss varies by position.
std::vector<uint32_t> make_tokens(int64_t n, uint32_t seed) {
  std::vector<uint32_t> t(n);
  uint32_t x = seed;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    t[i] = (i % 7 == 0) ? (x >> 16) % kVocab : static_cast<uint32_t>(i % kVocab);
  }
  return t;
}

// Two shards holding 2 and 3 windows of 64 + 1 tokens (10 tokens spare in the second): with
// --eval_windows=5 every window is evaluated, whatever their order.
struct Data {
  std::string glob;
  std::vector<std::vector<uint32_t>> shards;
};

Data write_data(const std::string& dir) {
  Data d;
  d.shards = {make_tokens(2 * kSeqLen + 1, 1), make_tokens(3 * kSeqLen + 11, 2)};
  for (size_t i = 0; i < d.shards.size(); ++i) {
    const absl::Status s =
        write_shard(dir + "/val-" + std::to_string(i) + ".tok", d.shards[i], TokenWidth::kU16);
    EXPECT_TRUE(s.ok()) << s;
  }
  d.glob = dir + "/val-*.tok";
  return d;
}

// Independently: per position, the cross entropy of the next token from the model's logits
// (log-softmax in double), summed over every window of the shards.
// With `eos`, each window's documents (starting after every EOS) run on their own, as packed
// training runs them, and a token's position is its position in its document; `counts` (when
// given) receives the number of tokens at each position.
std::vector<double> loss_sum_by_position(const std::string& checkpoint, const Data& data,
                                         MsaMode mode, double* forward_loss,
                                         std::optional<int32_t> eos = std::nullopt,
                                         std::vector<int64_t>* counts = nullptr) {
  auto ckpt = load_checkpoint(checkpoint, /*weights_only=*/true);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  Transformer model(ckpt->config, DType::kF32, Device::kCPU);
  for (Parameter& p : model.params().all()) p.value.copy_from(ckpt->params.at(p.spec.name));
  std::vector<double> sum(kSeqLen, 0.0);
  if (counts) counts->assign(kSeqLen, 0);
  double forward_sum = 0;
  int64_t windows = 0;
  for (const std::vector<uint32_t>& shard : data.shards) {
    for (int64_t w = 0; w < (static_cast<int64_t>(shard.size()) - 1) / kSeqLen; ++w) {
      Tensor tokens = Tensor::empty({1, kSeqLen}, DType::kI32);
      Tensor targets = Tensor::empty({1, kSeqLen}, DType::kI32);
      for (int64_t t = 0; t < kSeqLen; ++t) {
        tokens.data<int32_t>()[t] = static_cast<int32_t>(shard[w * kSeqLen + t]);
        targets.data<int32_t>()[t] = static_cast<int32_t>(shard[w * kSeqLen + t + 1]);
      }
      ForwardOptions options;
      options.msa_mode = mode;
      options.for_backward = false;
      std::vector<int64_t> position(kSeqLen);  // in the window, or in the document when packed
      for (int64_t t = 0; t < kSeqLen; ++t) position[t] = t;
      if (eos) {
        std::vector<int64_t> starts = {0};
        for (int64_t t = 0; t + 1 < kSeqLen; ++t)
          if (tokens.data<int32_t>()[t] == *eos) starts.push_back(t + 1);
        options.documents = std::make_shared<const DocumentSegments>(
            DocumentSegments::from_starts(1, kSeqLen, {starts}));
        for (int64_t t = 1; t < kSeqLen; ++t)
          position[t] = tokens.data<int32_t>()[t - 1] == *eos ? 0 : position[t - 1] + 1;
      }
      forward_sum += model.forward(tokens, targets, options).lm_loss;
      ++windows;
      const std::vector<double> logits = model.logits().to_double_vector();
      for (int64_t t = 0; t < kSeqLen; ++t) {
        const double* row = &logits[t * kVocab];
        double max = row[0], z = 0;
        for (int64_t v = 0; v < kVocab; ++v) max = std::max(max, row[v]);
        for (int64_t v = 0; v < kVocab; ++v) z += std::exp(row[v] - max);
        sum[position[t]] += max + std::log(z) - row[targets.data<int32_t>()[t]];
        if (counts) ++(*counts)[position[t]];
      }
    }
  }
  EXPECT_EQ(windows, 5);
  *forward_loss = forward_sum / windows;
  return sum;
}

// The cells of the Markdown row whose first cell is `first` (empty when absent).
std::vector<std::string> table_row(const std::string& output, const std::string& first) {
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> cells = absl::StrSplit(line, '|');
    if (cells.size() < 3) continue;
    std::vector<std::string> out;
    for (size_t i = 1; i + 1 < cells.size(); ++i)
      out.emplace_back(absl::StripAsciiWhitespace(cells[i]));
    if (!out.empty() && out[0] == first) return out;
  }
  return {};
}

double number(const std::string& cell) {
  double v = NAN;
  EXPECT_TRUE(absl::SimpleAtod(cell, &v)) << "'" << cell << "'";
  return v;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class MsaEvalPerplexityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_dir("eval_ppl");
    msa_ = write_checkpoint(dir_, "msa.h5", /*with_msa=*/true, 11);
    dense_ = write_checkpoint(dir_, "dense.h5", /*with_msa=*/false, 12);
    data_ = write_data(dir_);
  }
  std::string dir_, msa_, dense_;
  Data data_;
};

TEST_F(MsaEvalPerplexityTest, BucketsMatchAnIndependentComputationSideBySide) {
  const std::string csv = dir_ + "/ppl.csv";
  CommandResult r =
      run_eval("--checkpoint=" + msa_ + "," + dense_ + " --labels=msa,dense --data='" + data_.glob +
               "' --seq_len=64 --eval_windows=5 --position_buckets=0,8,32 --csv=" + csv);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("| position | tokens | msa loss | msa ppl | dense loss | "
                                  "dense ppl |"));
  EXPECT_THAT(r.output, HasSubstr("window 5/5"));  // progress per window

  const std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> buckets = {
      {"0-8", {0, 8}}, {"8-32", {8, 32}}, {"32-64", {32, 64}}};
  const std::pair<std::string, MsaMode> models[] = {{msa_, MsaMode::kSparse},
                                                    {dense_, MsaMode::kSparse}};
  std::map<std::string, double> table_loss;  // "<model index>/<bucket>"
  for (size_t m = 0; m < 2; ++m) {
    double forward_loss = 0;
    const std::vector<double> sum =
        loss_sum_by_position(models[m].first, data_, models[m].second, &forward_loss);
    double all = 0;
    for (const auto& [label, range] : buckets) {
      const std::vector<std::string> row = table_row(r.output, label);
      ASSERT_EQ(row.size(), 6u) << label << "\n" << r.output;
      // Every window contributes one next-token loss per position of the bucket.
      EXPECT_EQ(number(row[1]), 5 * (range.second - range.first)) << label;
      double expected = 0;
      for (int64_t t = range.first; t < range.second; ++t) expected += sum[t];
      all += expected;
      expected /= 5.0 * static_cast<double>(range.second - range.first);
      const double loss = number(row[2 + 2 * m]), ppl = number(row[3 + 2 * m]);
      ASSERT_TRUE(std::isfinite(loss) && std::isfinite(ppl)) << label;
      EXPECT_NEAR(loss, expected, 1e-4) << "model " << m << " bucket " << label;
      EXPECT_NEAR(ppl, std::exp(loss), 1e-3 * std::exp(loss)) << label;
      table_loss[std::to_string(m) + "/" + label] = loss;
    }
    const std::vector<std::string> row = table_row(r.output, "all");
    ASSERT_EQ(row.size(), 6u) << r.output;
    EXPECT_EQ(number(row[1]), 5 * kSeqLen);
    EXPECT_NEAR(number(row[2 + 2 * m]), all / (5.0 * kSeqLen), 1e-4);
    // The model's own mean loss over the same windows.
    EXPECT_NEAR(number(row[2 + 2 * m]), forward_loss, 1e-4);
  }
  // The random weights differ, so the two models' columns do too.
  EXPECT_NE(table_loss["0/0-8"], table_loss["1/0-8"]);

  // The CSV holds the same numbers at full precision.
  std::istringstream lines(read_file(csv));
  std::string line;
  ASSERT_TRUE(std::getline(lines, line));
  EXPECT_EQ(line, "model,bucket,position_begin,position_end,tokens,mean_loss,perplexity");
  int rows = 0;
  while (std::getline(lines, line)) {
    const std::vector<std::string> f = absl::StrSplit(line, ',');
    ASSERT_EQ(f.size(), 7u) << line;
    const double loss = number(f[5]);
    EXPECT_NEAR(number(f[6]), std::exp(loss), 1e-7 * std::exp(loss)) << line;
    if (f[1] == "all") {
      EXPECT_EQ(f[2] + "," + f[3] + "," + f[4], "0,64,320") << line;
    } else {
      const std::string key = std::string(f[0] == "msa" ? "0" : "1") + "/" + f[1];
      ASSERT_TRUE(table_loss.count(key)) << line;
      EXPECT_NEAR(loss, table_loss[key], 5.1e-5) << line;
      EXPECT_EQ(number(f[4]), 5 * (number(f[3]) - number(f[2]))) << line;
    }
    ++rows;
  }
  EXPECT_EQ(rows, 2 * 4);
}

// A checkpoint trained with --pack_documents is evaluated on the windows' documents (separated by
// the shards' EOS id, from their msa-data metadata), as it was trained: before, its attention
// crossed the documents and its positions ran on (a loss of 0.91 for 0.35 on real text).
// --pack_documents=false overrides it.
TEST_F(MsaEvalPerplexityTest, PackedCheckpointIsEvaluatedOnItsDocuments) {
  const std::string packed = write_checkpoint(dir_, "packed.h5", /*with_msa=*/true, 11, true);
  Data d;
  d.shards = {make_tokens(2 * kSeqLen + 1, 1), make_tokens(3 * kSeqLen + 11, 2)};
  for (size_t i = 0; i < d.shards.size(); ++i)
    ASSERT_TRUE(
        write_shard(dir_ + "/pk-0000" + std::to_string(i) + ".tok", d.shards[i], TokenWidth::kU16)
            .ok());
  d.glob = dir_ + "/pk-*.tok";
  constexpr int32_t kEos = 5;  // every 96th token of the ramp, and some of the noise
  std::ofstream(dir_ + "/pk.json") << "{\"eos_id\": " << kEos << "}";
  double unused = 0, whole = 0;
  const std::vector<double> sum = loss_sum_by_position(packed, d, MsaMode::kSparse, &unused, kEos);
  for (double x : sum) whole += x;
  double crossing = 0;
  loss_sum_by_position(packed, d, MsaMode::kSparse, &crossing);
  CommandResult r = run_eval("--checkpoint=" + packed + " --data='" + d.glob +
                             "' --eval_windows=5 --position_buckets=0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("packed documents (EOS id 5), as the checkpoint was trained"));
  std::vector<std::string> row = table_row(r.output, "all");
  ASSERT_EQ(row.size(), 4u) << r.output;
  EXPECT_NEAR(number(row[2]), whole / (5.0 * kSeqLen), 1e-4);
  EXPECT_GT(std::abs(number(row[2]) - crossing), 1e-3);  // the documents matter here
  // Buckets hold the tokens by their position in their document (they were bucketed by their
  // position in the window, mixing short-context tokens into the long-context rows).
  std::vector<int64_t> counts;
  loss_sum_by_position(packed, d, MsaMode::kSparse, &unused, kEos, &counts);
  r = run_eval("--checkpoint=" + packed + " --data='" + d.glob +
               "' --eval_windows=5 --position_buckets=0,8,32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("positions count from each document's start"));
  int64_t late_tokens = 0;
  for (const auto& [label, range] : std::vector<std::pair<std::string, std::pair<int, int>>>{
           {"0-8", {0, 8}}, {"8-32", {8, 32}}, {"32-64", {32, 64}}}) {
    row = table_row(r.output, label);
    ASSERT_EQ(row.size(), 4u) << label << "\n" << r.output;
    double expected = 0;
    int64_t n = 0;
    for (int t = range.first; t < range.second; ++t) {
      expected += sum[t];
      n += counts[t];
    }
    ASSERT_GT(n, 0) << label;
    EXPECT_EQ(number(row[1]), n) << label;
    EXPECT_NEAR(number(row[2]), expected / static_cast<double>(n), 1e-4) << label;
    if (label == "32-64") late_tokens = n;
  }
  EXPECT_LT(late_tokens, 5 * 32);  // documents end inside the windows: fewer late positions
  // Side by side with an unpacked checkpoint: the token cell gives each column's count.
  r = run_eval("--checkpoint=" + packed + "," + msa_ + " --labels=p,w --data='" + d.glob +
               "' --eval_windows=5 --position_buckets=0,8,32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  row = table_row(r.output, "32-64");
  ASSERT_EQ(row.size(), 6u) << r.output;
  EXPECT_EQ(row[1], std::to_string(late_tokens) + " / " + std::to_string(5 * (kSeqLen - 32)));
  // Every token, whatever its position.
  EXPECT_EQ(table_row(r.output, "all")[1], std::to_string(5 * kSeqLen));
  r = run_eval("--checkpoint=" + packed + " --data='" + d.glob +
               "' --eval_windows=5 --position_buckets=0 --pack_documents=false");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  row = table_row(r.output, "all");
  ASSERT_EQ(row.size(), 4u) << r.output;
  EXPECT_NEAR(number(row[2]), crossing, 1e-4);
  // Shards without metadata cannot say where their documents end: refused before any window,
  // also as the second checkpoint of a comparison (it failed after the first one's windows).
  r = run_eval("--checkpoint=" + packed + " --data='" + data_.glob + "' --eval_windows=5");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(packed + " was trained with --pack_documents"));
  r = run_eval("--checkpoint=" + msa_ + "," + packed + " --data='" + data_.glob +
               "' --eval_windows=5");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(packed + " was trained with --pack_documents"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("window 1/")));
}

TEST_F(MsaEvalPerplexityTest, DefaultsComeFromTheCheckpointAndDenseModeIsSelectable) {
  // --seq_len 0: the checkpoint's 64; default buckets for 64 tokens: 0-16, 16-32, 32-64.
  CommandResult r =
      run_eval("--checkpoint=" + msa_ + "," + msa_ + " --attention_mode=sparse,dense --data='" +
               data_.glob + "' --eval_windows=5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(msa_ + " sparse loss"));
  EXPECT_THAT(r.output, HasSubstr(msa_ + " dense loss"));
  EXPECT_EQ(table_row(r.output, "0-16").at(1), "80");
  EXPECT_EQ(table_row(r.output, "16-32").at(1), "80");
  EXPECT_EQ(table_row(r.output, "32-64").at(1), "160");
  double dense_forward = 0;
  loss_sum_by_position(msa_, data_, MsaMode::kDenseWarmup, &dense_forward);
  EXPECT_NEAR(number(table_row(r.output, "all").at(4)), dense_forward, 1e-4);
}

TEST_F(MsaEvalPerplexityTest, PlotIsAPngOfTheRequestedSizeWithOneLinePerCheckpoint) {
  const std::string plot = dir_ + "/ppl.png";
  CommandResult r =
      run_eval("--checkpoint=" + msa_ + "," + dense_ + " --data='" + data_.glob +
               "' --seq_len=64 --eval_windows=2 --plot=" + plot + " --plot_size=640x360");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string bytes = read_file(plot);
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  ASSERT_TRUE(png_image_begin_read_from_file(&image, plot.c_str())) << image.message;
  EXPECT_EQ(image.width, 640u);
  EXPECT_EQ(image.height, 360u);
  image.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> rgb(PNG_IMAGE_SIZE(image));
  ASSERT_TRUE(png_image_finish_read(&image, nullptr, rgb.data(), 0, nullptr)) << image.message;
  // The palette's first two colours (one per checkpoint) are on the image.
  auto count = [&](uint8_t r0, uint8_t g0, uint8_t b0) {
    int n = 0;
    for (size_t i = 0; i + 2 < rgb.size(); i += 3)
      n += rgb[i] == r0 && rgb[i + 1] == g0 && rgb[i + 2] == b0;
    return n;
  };
  EXPECT_GT(count(31, 119, 180), 50);
  EXPECT_GT(count(255, 127, 14), 50);
}

TEST_F(MsaEvalPerplexityTest, BadInputsNameTheFlagOrFile) {
  const std::string ok = "--checkpoint=" + msa_ + " --seq_len=64 --eval_windows=2";
  // No shard matches.
  CommandResult r = run_eval(ok + " --data='" + dir_ + "/missing-*.tok'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("invalid --data: no files match '" + dir_ + "/missing-*.tok'"));
  // A shard too short for one window of --seq_len + 1 tokens.
  const std::string short_shard = dir_ + "/short.tok";
  ASSERT_TRUE(write_shard(short_shard, make_tokens(50, 3), TokenWidth::kU16).ok());
  r = run_eval(ok + " --data=" + short_shard);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("invalid --data: no shard holds a window of --seq_len + 1 = 65 "
                                  "tokens (the longest, " +
                                  short_shard + ", holds 50 tokens"));
  // ... beside longer shards it is skipped with a warning naming it (a comma list of globs).
  r = run_eval(ok + " --data='" + short_shard + "," + data_.glob + "'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("warning: skipping shard " + short_shard + ": 50 tokens"));
  // A shard that two globs match (here spelled with ./ too) was evaluated and counted twice.
  r = run_eval(ok + " --data='" + data_.glob + "," + dir_ + "/./" + "short.tok," + short_shard +
               "'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("invalid --data: the shard '" + dir_ +
                                  "/./short.tok' is "
                                  "matched by '" +
                                  dir_ + "/./short.tok' and again by '" + short_shard + "'"));
  // A token outside the vocabulary.
  const std::string wide = dir_ + "/wide.tok";
  std::vector<uint32_t> tokens = make_tokens(2 * kSeqLen + 1, 4);
  tokens[70] = kVocab;
  ASSERT_TRUE(write_shard(wide, tokens, TokenWidth::kU16).ok());
  r = run_eval(ok + " --data=" + wide);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("invalid --data: " + wide));

  const std::string data = " --data='" + data_.glob + "'";
  const std::pair<std::string, std::string> cases[] = {
      {"--position_buckets=0,32,16", "invalid --position_buckets: 16 does not exceed 32"},
      {"--position_buckets=0,8,8", "invalid --position_buckets: 8 does not exceed 8"},
      {"--position_buckets=8,16", "invalid --position_buckets: the first bucket starts at 8"},
      {"--position_buckets=0,64", "invalid --position_buckets: 64 is not below --seq_len 64"},
      {"--position_buckets=0,x", "invalid --position_buckets: 'x' is not an integer"},
      {"--eval_windows=6", "invalid --eval_windows: 6 is outside [1, 5]"},
      {"--eval_windows=0", "invalid --eval_windows: 0 is < 1"},
      {"--labels=a,b", "invalid --labels: 2 labels for 1 checkpoints"},
      {"--attention_mode=sparse,dense", "invalid --attention_mode: 2 modes for 1 checkpoints"},
      {"--attention_mode=fast", "invalid --attention_mode: 'fast'"},
      {"--plot_size=100x100", "invalid --plot_size: '100x100'"},
      {"--seq_len=-1", "invalid --seq_len: -1"},
  };
  for (const auto& [flag, message] : cases) {
    r = run_eval(ok + data + " " + flag);
    EXPECT_EQ(r.exit_code, 1) << flag << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(message)) << flag;
  }
  // Refused before any window is evaluated (it failed after all of them).
  r = run_eval(ok + data + " --plot=" + dir_ + "/no-such-dir/ppl.png");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("invalid --plot: '" + dir_ + "/no-such-dir/ppl.png' cannot be created: '"));
  EXPECT_THAT(r.output, HasSubstr("/no-such-dir' does not exist"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("window 1/")));
}

}  // namespace
}  // namespace msa
