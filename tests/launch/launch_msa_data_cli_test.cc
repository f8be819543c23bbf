// msa-data and msa-train on token shards, end to end: text and JSONL -> shards -> training with
// validation; bad commands, bad input lines and shards that do not fit the model are one-line
// errors naming the problem.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_format.h"
#include "data/shard.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/command.h"

namespace {

using msa::test::CommandResult;
using msa::test::fresh_dir;
using msa::test::run_program;
using ::testing::HasSubstr;

const char kModel[] =
    "--attention=msa --d_model=32 --n_heads=4 --n_kv_heads=2 --head_dim=8 --ffn_dim=64 "
    "--msa_block_size=16 --msa_topk=4 --msa_index_dim=8 --seq_len=64 --batch_size=2 --device=cpu ";

TEST(MsaDataCliTest, TextShardsTrainWithValidation) {
  const std::string dir = fresh_dir("text_to_train");
  for (int i = 0; i < 3; ++i) {
    std::ofstream f(dir + "/doc" + std::to_string(i) + ".txt");
    for (int j = 0; j < 400; ++j)
      f << "document " << i << " line " << j << ": the quick brown fox\n";
  }
  CommandResult data =
      run_program("msa-data", "text --input=" + dir + "/doc0.txt," + dir + "/doc1.txt," + dir +
                                  "/doc2.txt --output=" + dir + "/shards --shard_tokens=20000");
  ASSERT_EQ(data.exit_code, 0) << data.output;
  EXPECT_THAT(data.output, HasSubstr("3 documents"));
  CommandResult train =
      run_program("msa-train", std::string(kModel) +
                                   "--vocab_size=257 --steps=6 --log_every=3 "
                                   "--eval_every=3 --eval_batches=2 --val_fraction=0.05 --data='" +
                                   dir + "/shards/*.tok'");
  ASSERT_EQ(train.exit_code, 0) << train.output;
  EXPECT_THAT(train.output, HasSubstr("validation windows"));
  EXPECT_THAT(train.output, HasSubstr("val_loss"));
  // More batches than the held-out windows fill would evaluate windows again (and count their
  // tokens twice): capped, and said.
  CommandResult many = run_program(
      "msa-train", std::string(kModel) +
                       "--vocab_size=257 --steps=1 --eval_every=1 --eval_batches=100000 "
                       "--val_fraction=0.05 --data='" +
                       dir + "/shards/*.tok'");
  ASSERT_EQ(many.exit_code, 0) << many.output;
  EXPECT_THAT(many.output, HasSubstr("--eval_batches=100000 but the validation split holds"));
  EXPECT_THAT(many.output, HasSubstr("val_loss"));
}

TEST(MsaDataCliTest, ShardsThatDoNotFitTheModelAreOneLineErrors) {
  const std::string dir = fresh_dir("too_small_vocab");
  {
    std::ofstream f(dir + "/a.txt");
    for (int j = 0; j < 200; ++j) f << "some text " << j << "\n";
  }
  ASSERT_EQ(run_program("msa-data", "text --input=" + dir + "/a.txt --output=" + dir + "/shards")
                .exit_code,
            0);
  // Bytes and EOS need vocab 257; a 128-token model cannot read them.
  CommandResult r =
      run_program("msa-train", std::string(kModel) + "--vocab_size=128 --steps=1 --data='" + dir +
                                   "/shards/*.tok'");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("invalid --data"));
  EXPECT_THAT(r.output, HasSubstr("is >= the model's vocab_size 128"));
  CommandResult none = run_program(
      "msa-train", std::string(kModel) + "--steps=1 --data='" + dir + "/nothing/*.tok'");
  EXPECT_NE(none.exit_code, 0);
  EXPECT_THAT(none.output, HasSubstr("no files match"));
  CommandResult bad = run_program("msa-data", "frobnicate");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.output, HasSubstr("unknown command 'frobnicate'"));
}

// A directory where a file belongs is refused by name: as msa-data's text input (it was one empty
// document) and as msa-train's --data (it was "mmap failed: No such device").
TEST(MsaDataCliTest, DirectoriesAreRefusedByName) {
  const std::string dir = fresh_dir("dir_inputs");
  std::system(("mkdir -p '" + dir + "/docs'").c_str());
  { std::ofstream(dir + "/a.txt") << "some text\n"; }
  CommandResult data = run_program(
      "msa-data", "text --input=" + dir + "/a.txt," + dir + "/docs --output=" + dir + "/out");
  EXPECT_EQ(data.exit_code, 1) << data.output;
  EXPECT_THAT(data.output, HasSubstr("invalid --input: '" + dir + "/docs' is a directory"));
  CommandResult train = run_program(
      "msa-train", std::string(kModel) + "--vocab_size=257 --steps=1 --data=" + dir + "/docs");
  EXPECT_NE(train.exit_code, 0) << train.output;
  EXPECT_THAT(train.output, HasSubstr(dir + "/docs: is a directory"));
  EXPECT_THAT(train.output, ::testing::Not(HasSubstr("mmap failed")));
}

// Shards of two tokenizers under one --data glob were trained as one vocabulary without a word;
// two sets of one tokenizer still train together.
TEST(MsaDataCliTest, ShardsOfDifferentTokenizersAreNotMixed) {
  const std::string dir = fresh_dir("mixed_tokenizers");
  {
    std::ofstream f(dir + "/a.txt");
    for (int j = 0; j < 300; ++j) f << "line " << j << ": the quick brown fox\n";
  }
  const std::string text = "text --input=" + dir + "/a.txt --output=" + dir;
  ASSERT_EQ(run_program("msa-data", text + "/bytes1").exit_code, 0);
  ASSERT_EQ(run_program("msa-data", text + "/bytes2").exit_code, 0);
  ASSERT_EQ(run_program("msa-data", text + "/llama --tokenizer=" + std::string(MSA_SOURCE_DIR) +
                                        "/tests/data/tokenizers/llama3")
                .exit_code,
            0);
  const std::string train = std::string(kModel) + "--vocab_size=300 --steps=1 --data='" + dir;
  CommandResult same = run_program("msa-train", train + "/bytes*/*.tok'");
  EXPECT_EQ(same.exit_code, 0) << same.output;
  CommandResult mixed = run_program("msa-train", train + "/*/*.tok'");
  EXPECT_EQ(mixed.exit_code, 1) << mixed.output;
  EXPECT_THAT(mixed.output, HasSubstr("invalid --data: the shards come from different "
                                      "tokenizers"));
  EXPECT_THAT(mixed.output, HasSubstr(dir + "/llama/train.json"));
  EXPECT_THAT(mixed.output, HasSubstr("tokenizer_fingerprint"));
  // Synthetic shards have their own vocabulary: not mixed with text shards either.
  ASSERT_EQ(run_program("msa-data",
                        "synthetic --seq_len=64 --samples=20 --output=" + dir + "/bytes_synthetic")
                .exit_code,
            0);
  CommandResult synthetic = run_program("msa-train", train + "/bytes*/*.tok'");
  EXPECT_EQ(synthetic.exit_code, 1) << synthetic.output;
  EXPECT_THAT(synthetic.output, HasSubstr("synthetic shards"));
  std::system(("rm -rf '" + dir + "/bytes_synthetic'").c_str());
  // The same tokenizer with another EOS (or BOS added or not) gives no id another meaning; a
  // JSON file beside shards that msa-data did not write is no metadata to compare.
  ASSERT_EQ(run_program("msa-data", text + "/bytes_eos --eos_id=10").exit_code, 0);
  CommandResult eos = run_program("msa-train", train + "/bytes*/*.tok'");
  EXPECT_EQ(eos.exit_code, 0) << eos.output;
  std::system(("mkdir -p '" + dir + "/bytes_foreign' && cp '" + dir + "/bytes1/train-00000.tok' '" +
               dir + "/bytes_foreign/train-00000.tok'")
                  .c_str());
  std::ofstream(dir + "/bytes_foreign/train.json") << "{\"source\": \"a crawl\"}";
  CommandResult foreign = run_program("msa-train", train + "/bytes*/*.tok'");
  EXPECT_EQ(foreign.exit_code, 0) << foreign.output;
  // msa-eval --data checks the same.
  const std::string ckpt_dir = dir + "/ckpt";
  ASSERT_EQ(
      run_program("msa-train", train + "/bytes1/*.tok' --checkpoint_dir=" + ckpt_dir).exit_code, 0);
  CommandResult eval = run_program("msa-eval", "--device=cpu --checkpoint=" + ckpt_dir +
                                                   "/ckpt-00000001.h5 --data='" + dir +
                                                   "/*/*.tok' --seq_len=64 --eval_windows=1");
  EXPECT_EQ(eval.exit_code, 1) << eval.output;
  EXPECT_THAT(eval.output, HasSubstr("invalid --data: the shards come from different tokenizers"));
}

// A document quoting a special token's text (web text about chat templates): by default the
// special id, as the tokenizers library encodes it, and said in a note (a quoted <|eot_id|> was a
// silent EOS inside the document, which --pack_documents splits there);
// --split_special_tokens encodes the text as ordinary text.
TEST(MsaDataCliTest, SpecialTokenTextInDocumentsIsSaidOrSplit) {
  const std::string dir = fresh_dir("special_text");
  {
    std::ofstream(dir + "/docs.jsonl") << "{\"text\": \"A doc quoting <|eot_id|> in it.\"}\n"
                                       << "{\"text\": \"A plain one.\"}\n";
  }
  const std::string tokenizer = std::string(MSA_SOURCE_DIR) + "/tests/data/tokenizers/llama3";
  auto shard_tokens = [&](const std::string& out) {
    std::vector<uint32_t> tokens;
    auto r = msa::ShardReader::open(out + "/train-00000.tok");
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok())
      for (int64_t i = 0; i < (*r)->size(); ++i) tokens.push_back((*r)->token(i));
    return tokens;
  };
  constexpr uint32_t kBos = 262, kEos = 264;
  const std::string text = "text --input=" + dir + "/docs.jsonl --tokenizer=" + tokenizer;
  CommandResult matched = run_program("msa-data", text + " --output=" + dir + "/matched");
  ASSERT_EQ(matched.exit_code, 0) << matched.output;
  EXPECT_THAT(matched.output, HasSubstr("note: 1 of 2 documents hold the text of a special token"));
  std::vector<uint32_t> t = shard_tokens(dir + "/matched");
  ASSERT_GT(t.size(), 4u);
  EXPECT_EQ(std::count(t.begin(), t.end(), kEos), 3);  // two documents' EOS and the quoted one
  EXPECT_EQ(std::count(t.begin(), t.end(), kBos), 2);
  CommandResult split =
      run_program("msa-data", text + " --output=" + dir + "/split --split_special_tokens");
  ASSERT_EQ(split.exit_code, 0) << split.output;
  EXPECT_THAT(split.output, ::testing::Not(HasSubstr("note:")));
  t = shard_tokens(dir + "/split");
  EXPECT_EQ(std::count(t.begin(), t.end(), kEos), 2);  // only the documents' own
  EXPECT_EQ(std::count(t.begin(), t.end(), kBos), 2);
  EXPECT_EQ(t.front(), kBos);
  EXPECT_EQ(t.back(), kEos);
  // Where there are no special tokens the flag would only change the metadata: refused.
  CommandResult bytes =
      run_program("msa-data", "text --input=" + dir + "/docs.jsonl --output=" + dir +
                                  "/bytes --split_special_tokens");
  EXPECT_EQ(bytes.exit_code, 1) << bytes.output;
  EXPECT_THAT(bytes.output, HasSubstr("invalid --split_special_tokens: the byte-level tokenizer"));
  CommandResult synthetic =
      run_program("msa-data", "synthetic --seq_len=64 --samples=4 --output=" + dir +
                                  "/synthetic --split_special_tokens");
  EXPECT_EQ(synthetic.exit_code, 1) << synthetic.output;
  EXPECT_THAT(synthetic.output, HasSubstr("invalid --split_special_tokens: it belongs to 'text'"));
}

// Synthetic shards hold one sample per window only at their own length: at another --seq_len
// the windows cut samples apart (facts from their queries) and trained without a word.
TEST(MsaDataCliTest, SyntheticShardsTrainOnlyAtTheirLength) {
  const std::string dir = fresh_dir("synthetic_length");
  ASSERT_EQ(
      run_program("msa-data", "synthetic --seq_len=64 --samples=20 --output=" + dir).exit_code, 0);
  const std::string train =
      std::string(kModel) + "--vocab_size=96 --steps=1 --data='" + dir + "/*.tok' --seq_len=";
  CommandResult other = run_program("msa-train", train + "32");
  EXPECT_EQ(other.exit_code, 1) << other.output;
  EXPECT_THAT(other.output, HasSubstr("invalid --data: the synthetic shards of " + dir +
                                      "/kv-recall.json hold samples of 64 tokens, one per "
                                      "window only at --seq_len=64, not 32"));
  CommandResult own = run_program("msa-train", train + "64 --checkpoint_dir=" + dir + "/ckpt");
  ASSERT_EQ(own.exit_code, 0) << own.output;
  // msa-eval --data too.
  CommandResult eval = run_program("msa-eval", "--device=cpu --checkpoint=" + dir +
                                                   "/ckpt/ckpt-00000001.h5 --data='" + dir +
                                                   "/*.tok' --seq_len=32 --eval_windows=1");
  EXPECT_EQ(eval.exit_code, 1) << eval.output;
  EXPECT_THAT(eval.output, HasSubstr("one per window only at --seq_len=64, not 32"));
}

// Compressed inputs were tokenized as text (their compressed bytes); an upper-case .JSONL was
// read as plain text, the whole JSON line one document.
TEST(MsaDataCliTest, CompressedInputsAreRefusedAndExtensionsIgnoreCase) {
  const std::string dir = fresh_dir("compressed_inputs");
  const std::pair<const char*, std::string> kinds[] = {
      {"gzip", std::string("\x1f\x8b\x08\x00rest", 8)},
      {"zstd", std::string("\x28\xb5\x2f\xfdrest", 8)},
      {"xz", std::string("\xfd"
                         "7zXZ\x00rest",
                         10)},
      {"bzip2", std::string("BZh91AY&SY")},
      {"bzip2", std::string("BZh9\x17rE8P\x90", 10)}};  // an empty stream
  for (const auto& [name, bytes] : kinds) {
    const std::string input = dir + "/in." + name;
    { std::ofstream(input, std::ios::binary) << bytes; }
    CommandResult r =
        run_program("msa-data", "text --input=" + input + " --output=" + dir + "/out_" + name);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr("invalid --input: '" + input + "' is " + name + "-compressed"));
  }
  { std::ofstream(dir + "/DOCS.JSONL") << "{\"text\": \"ab\"}\n{\"text\": \"cd\"}\n"; }
  CommandResult r =
      run_program("msa-data", "text --input=" + dir + "/DOCS.JSONL --output=" + dir + "/jsonl");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("2 documents, 6 tokens"));
  // A .json file is plain text, its whole text one document: said (an array of documents was
  // taken as one without a word); a plain text file is not.
  { std::ofstream(dir + "/docs.json") << "\n [{\"text\": \"ab\"}, {\"text\": \"cd\"}]\n"; }
  { std::ofstream(dir + "/plain.json") << "not json\n"; }
  r = run_program("msa-data", "text --input=" + dir + "/docs.json --output=" + dir + "/json");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("note: '" + dir + "/docs.json' is JSON, read as plain text"));
  r = run_program("msa-data", "text --input=" + dir + "/plain.json --output=" + dir + "/plain");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("note:")));
  // Nor when the format was given; a byte order mark before the JSON is still JSON.
  r = run_program("msa-data",
                  "text --format=text --input=" + dir + "/docs.json --output=" + dir + "/given");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("note:")));
  { std::ofstream(dir + "/bom.json") << "\xEF\xBB\xBF{\"text\": \"ab\"}\n"; }
  r = run_program("msa-data", "text --input=" + dir + "/bom.json --output=" + dir + "/bom");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("bom.json' is JSON"));
  // A pipe is not checked (reading its first bytes took them from the reader: 4 KiB lost).
  {
    std::ofstream f(dir + "/big.txt");
    for (int i = 0; i < 1000; ++i) f << "line " << i << " of a text read through a pipe\n";
  }
  CommandResult named =
      run_program("msa-data", "text --input=" + dir + "/big.txt --output=" + dir + "/named");
  CommandResult piped =
      msa::test::run_command("cat " + dir + "/big.txt | " + msa::test::program_path("msa-data") +
                             " text --input=/dev/stdin --output=" + dir + "/piped");
  ASSERT_EQ(named.exit_code, 0) << named.output;
  ASSERT_EQ(piped.exit_code, 0) << piped.output;
  const auto summary = [](const std::string& out) { return out.substr(out.find("1 documents")); };
  EXPECT_EQ(summary(named.output).substr(0, 30), summary(piped.output).substr(0, 30));
}

// Shards of an earlier run in --output are refused (a glob would mix them with the new ones);
// --overwrite deletes them first.
TEST(MsaDataCliTest, StaleShardsAreRefusedUnlessOverwrite) {
  const std::string dir = fresh_dir("stale_shards");
  {
    std::ofstream f(dir + "/a.txt");
    for (int j = 0; j < 100; ++j) f << "line " << j << "\n";
  }
  const std::string text = "text --input=" + dir + "/a.txt --output=" + dir + "/out";
  ASSERT_EQ(run_program("msa-data", text + " --shard_tokens=100").exit_code, 0);
  CommandResult again = run_program("msa-data", text + " --shard_tokens=100000");
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_THAT(again.output, HasSubstr("invalid --output: '" + dir + "/out' already holds"));
  EXPECT_THAT(again.output, HasSubstr("--overwrite"));
  CommandResult overwrite = run_program("msa-data", text + " --shard_tokens=100000 --overwrite");
  ASSERT_EQ(overwrite.exit_code, 0) << overwrite.output;
  EXPECT_THAT(overwrite.output, HasSubstr("in 1 shard(s)"));
  FILE* p = popen(("ls '" + dir + "/out' | wc -l").c_str(), "r");
  int files = -1;
  ASSERT_EQ(fscanf(p, "%d", &files), 1);
  pclose(p);
  EXPECT_EQ(files, 2);  // the shard and train.json
  // The synthetic command refuses and overwrites the same way.
  const std::string synth = "synthetic --seq_len=64 --samples=2 --output=" + dir + "/out";
  CommandResult synth_refused = run_program("msa-data", synth);
  EXPECT_EQ(synth_refused.exit_code, 1) << synth_refused.output;
  EXPECT_THAT(synth_refused.output, HasSubstr("already holds 1 token shard"));
  EXPECT_EQ(run_program("msa-data", synth + " --overwrite").exit_code, 0);
  // The text shards' metadata went with them.
  EXPECT_FALSE(std::ifstream(dir + "/out/train.json").good());
  EXPECT_TRUE(std::ifstream(dir + "/out/kv-recall-00000.tok").good());
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// JSONL lines are documents (escapes decoded), the summary names tokenizer, width and metadata,
// and the shards train.
TEST(MsaDataCliTest, JsonlDocumentsThroughTheBinary) {
  const std::string dir = fresh_dir("jsonl");
  {
    std::ofstream f(dir + "/docs.jsonl");
    for (int i = 0; i < 300; ++i)
      f << "{\"id\": " << i << ", \"text\": \"line " << i << "\\tq\\u00e9\"}\n";
  }
  CommandResult data = run_program(
      "msa-data", "text --input=" + dir + "/docs.jsonl --output=" + dir + "/shards --threads=3");
  ASSERT_EQ(data.exit_code, 0) << data.output;
  EXPECT_THAT(data.output, HasSubstr("300 documents"));
  EXPECT_THAT(data.output, HasSubstr("byte-level"));
  EXPECT_THAT(data.output, HasSubstr("uint16"));
  EXPECT_THAT(data.output, HasSubstr("in 1 shard(s)"));
  EXPECT_THAT(data.output, HasSubstr(dir + "/shards/train.json"));
  // "line N", tab, "q", e-acute (2 bytes) and EOS per document.
  int64_t tokens = 0;
  for (int i = 0; i < 300; ++i) tokens += 5 + std::to_string(i).size() + 1 + 1 + 2 + 1;
  EXPECT_THAT(data.output, HasSubstr(absl::StrFormat(" %d tokens", tokens)));
  EXPECT_THAT(slurp(dir + "/shards/train.json"), HasSubstr("\"format\": \"jsonl\""));
  CommandResult train =
      run_program("msa-train", std::string(kModel) + "--vocab_size=257 --steps=2 --data='" + dir +
                                   "/shards/*.tok'");
  EXPECT_EQ(train.exit_code, 0) << train.output;
}

TEST(MsaDataCliTest, TextFieldChoosesTheJsonlField) {
  const std::string dir = fresh_dir("text_field");
  { std::ofstream(dir + "/a.jsonl") << "{\"body\": \"hello\"}\n{\"body\": \"world\"}\n"; }
  const std::string text = "text --input=" + dir + "/a.jsonl --output=" + dir + "/out";
  CommandResult missing = run_program("msa-data", text);
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
  EXPECT_THAT(missing.output, HasSubstr("msa-data: invalid --input: '" + dir +
                                        "/a.jsonl' line 1: no field \"text\" (the object has "
                                        "\"body\"; choose one with --text_field)"));
  CommandResult body = run_program("msa-data", text + " --text_field=body");
  ASSERT_EQ(body.exit_code, 0) << body.output;
  EXPECT_THAT(body.output, HasSubstr("2 documents, 12 tokens"));
}

// A malformed line stops the run with the file and line, and leaves no shards behind.
TEST(MsaDataCliTest, MalformedJsonlLineIsAnErrorNamingFileAndLine) {
  const std::string dir = fresh_dir("malformed");
  {
    std::ofstream f(dir + "/a.jsonl");
    f << "{\"text\": \"fine\"}\n{\"text\": \"fine\"}\n{\"text\": \"broken}\n";
  }
  CommandResult r = run_program(
      "msa-data", "text --input=" + dir + "/a.jsonl --output=" + dir + "/out --shard_tokens=4");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("msa-data: invalid --input: '" + dir + "/a.jsonl' line 3, column"));
  EXPECT_THAT(r.output, HasSubstr("not valid JSON"));
  FILE* p = popen(("ls -A '" + dir + "' | wc -l").c_str(), "r");
  int entries = -1;
  ASSERT_EQ(fscanf(p, "%d", &entries), 1);
  pclose(p);
  EXPECT_EQ(entries, 1) << "only a.jsonl: no output directory, shards or staging left";
  CommandResult format = run_program(
      "msa-data", "text --input=" + dir + "/a.jsonl --output=" + dir + "/out --format=xml");
  EXPECT_EQ(format.exit_code, 1);
  EXPECT_THAT(format.output, HasSubstr("invalid --format: 'xml'"));
  CommandResult tokenizer =
      run_program("msa-data", "text --input=" + dir + "/a.jsonl --output=" + dir +
                                  "/out --tokenizer=" + dir + "/no_such_model");
  EXPECT_EQ(tokenizer.exit_code, 1);
  EXPECT_THAT(tokenizer.output, HasSubstr("invalid --tokenizer"));
  EXPECT_THAT(tokenizer.output, HasSubstr(dir + "/no_such_model"));
}

// A NUL byte ends nlohmann's input: the rest of the line would be dropped unseen, so the line is
// refused at the byte's column.
TEST(MsaDataCliTest, NulByteInAJsonlLineIsAnErrorNamingItsColumn) {
  const std::string dir = fresh_dir("nul_jsonl");
  {
    std::ofstream f(dir + "/a.jsonl", std::ios::binary);
    f << "{\"text\": \"fine\"}\n{\"text\":\"a\"}" << '\0' << "garbage}}}\n";
  }
  CommandResult r =
      run_program("msa-data", "text --input=" + dir + "/a.jsonl --output=" + dir + "/out");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("'" + dir + "/a.jsonl' line 2, column 13: a NUL byte"));
}

// Inputs without a document write nothing: with --overwrite the folder's shards stay as they
// were (before, they were replaced by no shards and exit 0).
TEST(MsaDataCliTest, InputsWithoutDocumentsLeaveTheOutputUnchanged) {
  const std::string dir = fresh_dir("no_documents");
  std::ofstream(dir + "/a.txt") << "one line\n";
  std::ofstream(dir + "/empty.jsonl") << "\n  \n";
  const std::string out = " --output=" + dir + "/out";
  ASSERT_EQ(run_program("msa-data", "text --input=" + dir + "/a.txt" + out).exit_code, 0);
  const std::string shard = slurp(dir + "/out/train-00000.tok");
  ASSERT_FALSE(shard.empty());
  CommandResult r =
      run_program("msa-data", "text --input=" + dir + "/empty.jsonl --overwrite" + out);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("invalid --input: no text in " + dir + "/empty.jsonl"));
  EXPECT_EQ(slurp(dir + "/out/train-00000.tok"), shard);
  EXPECT_TRUE(std::ifstream(dir + "/out/train.json").good());
  // An empty plain-text file is no document either (it was one of just the EOS, and replaced the
  // shards with that).
  std::ofstream(dir + "/empty.txt").flush();
  r = run_program("msa-data", "text --input=" + dir + "/empty.txt --overwrite" + out);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("invalid --input: no text in " + dir + "/empty.txt"));
  EXPECT_EQ(slurp(dir + "/out/train-00000.tok"), shard);
  // Nor are JSONL lines of empty strings, each of which is a document of just the EOS (they
  // replaced the shards with two EOS tokens).
  std::ofstream(dir + "/empty_strings.jsonl") << "{\"text\": \"\"}\n{\"text\": \"\"}\n";
  r = run_program("msa-data", "text --input=" + dir + "/empty_strings.jsonl --overwrite" + out);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("invalid --input: no text in " + dir + "/empty_strings.jsonl"));
  EXPECT_EQ(slurp(dir + "/out/train-00000.tok"), shard);
}

// A path where a metadata file belongs that is a directory is a message, not an uncaught
// std::ios_base::failure (abort).
TEST(MsaDataCliTest, MetadataPathThatIsADirectoryIsAMessage) {
  const std::string dir = fresh_dir("metadata_dir");
  std::ofstream(dir + "/a.txt") << "one line\n";
  ASSERT_EQ(::system(("mkdir -p '" + dir + "/out/train.json'").c_str()), 0);
  CommandResult r =
      run_program("msa-data", "text --input=" + dir + "/a.txt --output=" + dir + "/out");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("'" + dir + "/out/train.json' is a directory"));
  // --overwrite too: the commit would move the shards in, then fail to rename the metadata over
  // the directory, leaving shards without their metadata.
  CommandResult overwrite = run_program(
      "msa-data", "text --input=" + dir + "/a.txt --output=" + dir + "/out --overwrite");
  EXPECT_EQ(overwrite.exit_code, 1) << overwrite.output;
  EXPECT_THAT(overwrite.output, HasSubstr("'" + dir + "/out/train.json' is a directory"));
  EXPECT_FALSE(std::ifstream(dir + "/out/train-00000.tok").good());
}

// A Hugging Face tokenizer (the Llama 3 style test tokenizer: BOS 262 added, EOS 264) frames every
// document; one without EOS or BOS needs --eos_id.
TEST(MsaDataCliTest, HfTokenizerFramesDocuments) {
  const std::string dir = fresh_dir("hf_tokenizer");
  { std::ofstream(dir + "/a.jsonl") << "{\"text\": \"hello world\"}\n{\"text\": \"again\"}\n"; }
  const std::string tokenizers = std::string(MSA_SOURCE_DIR) + "/tests/data/tokenizers";
  const std::string text = "text --input=" + dir + "/a.jsonl --output=" + dir + "/out";
  CommandResult r = run_program(
      "msa-data", text + " --tokenizer=" + msa::test::shell_quote(tokenizers + "/llama3"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("2 documents"));
  EXPECT_THAT(r.output, HasSubstr("BOS 262, EOS 264; uint16) in 1 shard(s)"));
  const std::string shard = slurp(dir + "/out/train-00000.tok");
  ASSERT_GT(shard.size(), 36u);
  auto token = [&](size_t i) {
    return static_cast<int>(static_cast<unsigned char>(shard[32 + 2 * i]) |
                            static_cast<unsigned char>(shard[33 + 2 * i]) << 8);
  };
  const size_t n = (shard.size() - 32) / 2;
  EXPECT_EQ(token(0), 262);
  EXPECT_EQ(token(n - 1), 264);
  int bos = 0, eos = 0;
  for (size_t i = 0; i < n; ++i) {
    bos += token(i) == 262;
    eos += token(i) == 264;
  }
  EXPECT_EQ(bos, 2);
  EXPECT_EQ(eos, 2);
  EXPECT_THAT(slurp(dir + "/out/train.json"), HasSubstr("\"tokenizer_path\": \"" + tokenizers));

  const std::string plain =
      text + "2 --tokenizer=" + msa::test::shell_quote(tokenizers + "/tiny_bytelevel.json");
  CommandResult no_eos = run_program("msa-data", plain);
  EXPECT_EQ(no_eos.exit_code, 1) << no_eos.output;
  EXPECT_THAT(no_eos.output, HasSubstr("defines no EOS token and adds no BOS"));
  CommandResult with_eos = run_program("msa-data", plain + " --eos_id=0");
  EXPECT_EQ(with_eos.exit_code, 0) << with_eos.output;
  EXPECT_THAT(with_eos.output, HasSubstr("EOS 0; uint16"));
}

}  // namespace
