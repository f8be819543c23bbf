// HDF5 checkpoints: exact resume, and every kind of bad file rejected with a
// message naming the file and the dataset, without harming the good checkpoints
// beside it.
#include <fcntl.h>
#include <hdf5.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/train_program.h"
#include "model/parameters.h"
#include "train/checkpoint.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + name;
  std::system(("rm -rf '" + dir + "'").c_str());
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

TrainProgramOptions tiny_run(const std::string& dir, int64_t steps) {
  TrainProgramOptions o;
  o.model.vocab_size = 96;
  o.model.d_model = 32;
  o.model.n_layers = 2;
  o.model.n_heads = 4;
  o.model.n_kv_heads = 2;
  o.model.head_dim = 8;
  o.model.ffn_dim = 64;
  o.model.msa.block_size = 8;
  o.model.msa.topk = 3;
  o.model.msa.index_dim = 8;
  o.attention_spec = "msa,dense";
  o.device = "cpu";
  o.data = "synthetic:kv-recall";
  o.batch_size = 2;
  o.seq_len = 48;
  o.trainer.steps = steps;
  o.trainer.lr.max_lr = 3e-3;
  o.trainer.lr.min_lr = 3e-4;
  o.trainer.lr.warmup_steps = 5;
  o.trainer.lr.total_steps = steps;
  o.trainer.quiet = true;
  o.trainer.recall_every = 7;
  o.checkpoint_dir = dir;
  o.metrics_jsonl = dir + "/metrics.jsonl";
  return o;
}

std::vector<std::string> lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> out;
  for (std::string l; std::getline(f, l);) out.push_back(l);
  return out;
}

void expect_identical(const std::map<std::string, Tensor>& a,
                      const std::map<std::string, Tensor>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << what << " " << name;
    EXPECT_EQ(t.to_double_vector(), b.at(name).to_double_vector()) << what << " " << name;
  }
}

// Every MSA phase: steps 1-5 index warm-up with the backbone frozen, 6-17 index warm-up with dense
// attention (0.3 * 40 steps), 18-40 sparse; the run stops inside the dense-attention phase.
TrainProgramOptions phased_run(const std::string& dir) {
  TrainProgramOptions o = tiny_run(dir, 40);
  o.trainer.index_warmup_steps = 5;
  o.dense_attention_fraction = 0.3;
  return o;
}

TEST(TrainCheckpointTest, ResumedRunIsBitIdenticalToAStraightRun) {
  const std::string straight = fresh_dir("straight"), resumed = fresh_dir("resumed");
  ASSERT_TRUE(run_train_program(phased_run(straight)).ok());
  TrainProgramOptions first = phased_run(resumed);
  first.exit_after_step = 10;
  ASSERT_TRUE(run_train_program(first).ok());
  EXPECT_EQ(list_checkpoint_steps(resumed), std::vector<int64_t>{10});
  TrainProgramOptions second = phased_run(resumed);
  second.resume = true;
  ASSERT_TRUE(run_train_program(second).ok());

  const auto a = lines(straight + "/metrics.jsonl"), b = lines(resumed + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 40u);
  ASSERT_EQ(b.size(), 40u);
  for (size_t i = 0; i < 40; ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
  // Recall was logged (steps 7, 14, ...: in the dense-attention and the sparse phase), with the
  // block recall and the recall ceiling beside the index recall.
  EXPECT_THAT(a[6], HasSubstr("\"index_recall\""));
  EXPECT_THAT(a[6], HasSubstr("\"block_recall\""));
  EXPECT_THAT(a[6], HasSubstr("\"index_recall_ceiling\""));
  EXPECT_THAT(a[27], HasSubstr("\"block_recall\""));
  EXPECT_THAT(a[27], HasSubstr("\"index_recall_ceiling\""));

  auto ca = load_checkpoint(checkpoint_path(straight, 40));
  auto cb = load_checkpoint(checkpoint_path(resumed, 40));
  ASSERT_TRUE(ca.ok()) << ca.status();
  ASSERT_TRUE(cb.ok()) << cb.status();
  expect_identical(ca->params, cb->params, "params");
  expect_identical(ca->m, cb->m, "first moments");
  expect_identical(ca->v, cb->v, "second moments");
  EXPECT_EQ(ca->state.step, 40);
  EXPECT_EQ(cb->state.tokens_seen, ca->state.tokens_seen);
  EXPECT_EQ(ca->state.tokens_seen, 40 * 2 * 48);
}

// Resuming with another global batch (here --batch_size 2 -> 3; dp size changes the same product)
// continues from the checkpoint's sample cursor: the cursor grows by the new global batch per
// step, so no sample of the first part is drawn again (the old rule, step x global batch, would
// have put step 5's cursor at 15 and re-read samples 8..14).
TEST(TrainCheckpointTest, ResumeAtAnotherGlobalBatchContinuesFromTheCursor) {
  const std::string dir = fresh_dir("rebatch");
  TrainProgramOptions first = tiny_run(dir, 4);
  first.checkpoint_every = 4;
  ASSERT_TRUE(run_train_program(first).ok());
  auto c4 = load_checkpoint(checkpoint_path(dir, 4));
  ASSERT_TRUE(c4.ok()) << c4.status();
  EXPECT_EQ(c4->state.sample_cursor, 8);
  TrainProgramOptions second = tiny_run(dir, 6);
  second.batch_size = 3;
  second.checkpoint_every = 1;
  second.resume = true;
  ASSERT_TRUE(run_train_program(second).ok());
  auto c5 = load_checkpoint(checkpoint_path(dir, 5));
  auto c6 = load_checkpoint(checkpoint_path(dir, 6));
  ASSERT_TRUE(c5.ok() && c6.ok());
  EXPECT_EQ(c5->state.sample_cursor, 11);
  EXPECT_EQ(c6->state.sample_cursor, 14);
}

TEST(TrainCheckpointTest, KeepLastPrunesOnlyOlderCheckpoints) {
  const std::string dir = fresh_dir("keep_last");
  TrainProgramOptions o = tiny_run(dir, 9);
  o.checkpoint_every = 2;
  o.keep_last = 2;
  ASSERT_TRUE(run_train_program(o).ok());
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{9, 8}));
}

TEST(TrainCheckpointTest, InitFromLoadsWeightsOnly) {
  const std::string dir = fresh_dir("init_from_src"), dst = fresh_dir("init_from_dst");
  ASSERT_TRUE(run_train_program(tiny_run(dir, 3)).ok());
  TrainProgramOptions o = tiny_run(dst, 1);
  o.init_from = checkpoint_path(dir, 3);
  o.trainer.lr.max_lr = 1e-30;  // one step that changes (almost) nothing
  o.trainer.lr.min_lr = 1e-30;
  o.optimizer.weight_decay = 0;
  ASSERT_TRUE(run_train_program(o).ok());
  auto src = load_checkpoint(checkpoint_path(dir, 3));
  auto out = load_checkpoint(checkpoint_path(dst, 1));
  ASSERT_TRUE(src.ok() && out.ok());
  EXPECT_EQ(out->state.step, 1);  // a fresh run, not a resume
  for (const auto& [name, t] : src->params) {
    const auto x = t.to_double_vector(), y = out->params.at(name).to_double_vector();
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-6) << name;
  }
  // Weights only: the moments started at zero, so after one step m = (1 - beta1) g and
  // v = (1 - beta2) g^2, whatever g was: m^2 / v = (1 - beta1)^2 / (1 - beta2) everywhere (the
  // checkpoint's moments, loaded too, passed the weights' check above unseen).
  const double b1 = o.optimizer.beta1, b2 = o.optimizer.beta2;
  const double ratio = (1 - b1) * (1 - b1) / (1 - b2);
  int64_t checked = 0;
  for (const auto& [name, m] : out->m) {
    const auto mv = m.to_double_vector(), vv = out->v.at(name).to_double_vector();
    for (size_t i = 0; i < mv.size(); ++i) {
      if (!(vv[i] > 1e-24)) continue;  // a zero gradient (e.g. an unused embedding row)
      ASSERT_NEAR(mv[i] * mv[i] / vv[i], ratio, 1e-3 * ratio) << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 1000);
  // And the data restarted: one step's tokens, not the source run's four.
  EXPECT_EQ(out->state.tokens_seen * 3, src->state.tokens_seen);
  EXPECT_EQ(out->state.sample_cursor * 3, src->state.sample_cursor);
}

// --init_from takes the weights and checks the sizes by their shapes; what no shape shows (the
// norm epsilon, biases, q/k norms, tied embeddings) must agree too, and a tensor the model has no
// place for is refused, not dropped (all of them loaded silently into another model before).
TEST(TrainCheckpointTest, InitFromRefusesAModelTheFlagsDoNotBuild) {
  const std::string dir = fresh_dir("init_arch_src");
  TrainProgramOptions src = tiny_run(dir, 1);
  src.model.norm_eps = 1e-6;
  src.model.qkv_bias = true;
  src.model.qk_norm = true;
  src.model.n_layers = 3;
  src.attention_spec = "msa,dense,msa";
  src.source_model = {{"hf_architecture", "Qwen3ForCausalLM"}, {"hf_dtype", "F32"}};
  ASSERT_TRUE(run_train_program(src).ok());
  const std::string path = checkpoint_path(dir, 1);
  struct Case {
    const char* what;
    std::function<void(TrainProgramOptions&)> change;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"eps", [](TrainProgramOptions& o) { o.model.norm_eps = 1e-5; },
       "pass --norm_eps=1e-06 (not 0.00001)"},
      {"bias", [](TrainProgramOptions& o) { o.model.qkv_bias = false; }, "pass --qkv_bias"},
      {"qk norm", [](TrainProgramOptions& o) { o.model.qk_norm = false; }, "pass --qk_norm"},
      {"tied", [](TrainProgramOptions& o) { o.model.tied_embeddings = true; },
       "pass --notied_embeddings"},
      {"index rope", [](TrainProgramOptions& o) { o.model.msa.index_rotary_dim = 4; },
       "pass --msa_index_rotary_dim=0"},
      // The same projection shapes split into twice the heads of half the size.
      {"head split",
       [](TrainProgramOptions& o) {
         o.model.n_heads = 8;
         o.model.n_kv_heads = 4;
         o.model.head_dim = 4;
       },
       "pass --n_heads=4 (not 8) --n_kv_heads=2 (not 4) --head_dim=8 (not 4)"},
      {"fewer layers",
       [](TrainProgramOptions& o) {
         o.model.n_layers = 2;
         o.attention_spec = "msa,dense";
       },
       "holds parameter layers.2."},
      {"dense layer 2", [](TrainProgramOptions& o) { o.attention_spec = "msa,dense,dense"; },
       "holds parameter layers.2.attn.index_"},
  };
  for (const Case& c : cases) {
    const std::string dst = fresh_dir(std::string("init_arch_dst_") + c.what);
    TrainProgramOptions o = src;
    o.source_model.clear();
    o.checkpoint_dir = dst;
    o.metrics_jsonl = dst + "/metrics.jsonl";
    o.init_from = path;
    c.change(o);
    const absl::Status s = run_train_program(o);
    ASSERT_FALSE(s.ok()) << c.what;
    EXPECT_THAT(std::string(s.message()), HasSubstr(path)) << c.what;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.what << ": " << s;
    EXPECT_TRUE(list_checkpoint_steps(dst).empty()) << c.what;
  }
  // The same flags load it, and the run's checkpoint keeps the Hugging Face source (an export of
  // the trained model writes its architecture and dtype).
  const std::string dst = fresh_dir("init_arch_dst_same");
  TrainProgramOptions o = src;
  o.source_model.clear();
  o.checkpoint_dir = dst;
  o.metrics_jsonl = dst + "/metrics.jsonl";
  o.init_from = path;
  ASSERT_TRUE(run_train_program(o).ok());
  auto out = load_checkpoint(checkpoint_path(dst, 1), /*weights_only=*/true);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(out->run_json, HasSubstr("\"hf_architecture\":\"Qwen3ForCausalLM\""));
  EXPECT_THAT(out->run_json, HasSubstr("\"hf_dtype\":\"F32\""));
}

// ---- bad files
// -----------------------------------------------------------------------------

// A directory with good checkpoints at steps 2 and 4; returns the path of
// step 4.
std::string good_checkpoints(const std::string& name) {
  const std::string dir = fresh_dir(name);
  TrainProgramOptions o = tiny_run(dir, 4);
  o.checkpoint_every = 2;
  EXPECT_TRUE(run_train_program(o).ok());
  return checkpoint_path(dir, 4);
}

std::string copy_as_step(const std::string& good, int64_t step) {
  const std::string dir = good.substr(0, good.rfind('/'));
  const std::string bad = checkpoint_path(dir, step);
  std::ifstream in(good, std::ios::binary);
  std::ofstream out(bad, std::ios::binary);
  out << in.rdbuf();
  return bad;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A /config string attribute of an open file.
std::string config_attr(hid_t f, const char* name) {
  hid_t g = H5Gopen2(f, "/config", H5P_DEFAULT);
  hid_t a = H5Aopen(g, name, H5P_DEFAULT);
  hid_t type = H5Aget_type(a);
  std::string value(H5Tget_size(type), '\0');
  EXPECT_GE(H5Aread(a, type, value.data()), 0);
  value.resize(std::strlen(value.c_str()));
  H5Tclose(type);
  H5Aclose(a);
  H5Gclose(g);
  return value;
}

// Signs /config again after its attributes were rewritten, as a writer with that config would
// have: the checksum of model, run and format_version, each followed by a NUL.
void resign_config(const std::string& path) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  std::string bytes;
  for (const char* name : {"model", "run", "format_version"}) {
    bytes += config_attr(f, name);
    bytes += '\0';
  }
  const uint64_t sum = fnv1a64(bytes);
  hid_t g = H5Gopen2(f, "/config", H5P_DEFAULT);
  hid_t attr = H5Aopen(g, "fnv1a64", H5P_DEFAULT);
  ASSERT_GE(attr, 0) << "a checkpoint of this build signs /config";
  ASSERT_GE(H5Awrite(attr, H5T_NATIVE_UINT64, &sum), 0);
  H5Aclose(attr);
  H5Gclose(g);
  H5Fclose(f);
}

// A copy of `good` named and stamped as step `step` (/state/step rewritten and signed): a valid
// checkpoint of that step, as a run that reached it would have written.
std::string copy_as_valid_step(const std::string& good, int64_t step) {
  const std::string path = copy_as_step(good, step);
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  EXPECT_GE(f, 0);
  hid_t ds = H5Dopen2(f, "/state/step", H5P_DEFAULT);
  EXPECT_GE(H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &step), 0);
  const uint64_t sum = fnv1a64(std::string(reinterpret_cast<const char*>(&step), sizeof(step)));
  hid_t attr = H5Aopen(ds, "fnv1a64", H5P_DEFAULT);
  EXPECT_GE(H5Awrite(attr, H5T_NATIVE_UINT64, &sum), 0);
  H5Aclose(attr);
  H5Dclose(ds);
  H5Fclose(f);
  return path;
}

// The bad file is reported with the expected message, the good ones stay valid,
// and resume falls back to the newest good checkpoint (step 4).
void expect_rejected(const std::string& good, const std::string& bad, const std::string& message) {
  auto r = load_checkpoint(bad);
  ASSERT_FALSE(r.ok()) << "the corrupt checkpoint loaded";
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(bad));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(message));
  const std::string dir = good.substr(0, good.rfind('/'));
  auto latest = load_latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->path, good);
  EXPECT_TRUE(load_checkpoint(checkpoint_path(dir, 2)).ok());
  // And the program resumes from it.
  TrainProgramOptions o = tiny_run(dir, 5);
  o.resume = true;
  ASSERT_TRUE(run_train_program(o).ok());
  EXPECT_TRUE(load_checkpoint(checkpoint_path(dir, 5)).ok());
  EXPECT_TRUE(load_checkpoint(good).ok()) << "the good checkpoint was harmed";
}

TEST(TrainCheckpointTest, DirectoryGivenForAFileSaysSo) {
  const std::string dir = fresh_dir("dir_as_file");
  auto r = load_checkpoint(dir, /*weights_only=*/true);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(dir + ": a directory, not a checkpoint file"));
}

TEST(TrainCheckpointTest, TruncatedFileIsRejected) {
  const std::string good = good_checkpoints("bad_truncated");
  const std::string bad = copy_as_step(good, 10);
  struct stat st;
  ASSERT_EQ(::stat(bad.c_str(), &st), 0);
  ASSERT_EQ(::truncate(bad.c_str(), st.st_size / 2), 0);
  expect_rejected(good, bad, "truncated or corrupt");
}

// Offset in the file of the raw data of `dataset` (contiguous layout).
haddr_t dataset_offset(const std::string& path, const std::string& dataset) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  const haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return off;
}

TEST(TrainCheckpointTest, FlippedByteInAParameterFailsTheChecksum) {
  const std::string good = good_checkpoints("bad_flip");
  const std::string bad = copy_as_step(good, 10);
  const haddr_t off = dataset_offset(bad, "/params/layers.1.mlp.w_up.weight");
  ASSERT_NE(off, HADDR_UNDEF);
  std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(off + 37));
  char c;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(static_cast<std::streamoff>(off + 37));
  f.write(&c, 1);
  f.close();
  expect_rejected(good, bad, "checksum mismatch in dataset /params/layers.1.mlp.w_up.weight");
}

TEST(TrainCheckpointTest, MissingDatasetIsRejected) {
  const std::string good = good_checkpoints("bad_missing");
  const std::string bad = copy_as_step(good, 10);
  hid_t f = H5Fopen(bad.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(H5Ldelete(f, "/optimizer/layers.0.attn.index_wq.weight/v", H5P_DEFAULT), 0);
  H5Fclose(f);
  expect_rejected(good, bad, "missing dataset /optimizer/layers.0.attn.index_wq.weight/v");
}

// Replaces /config attribute `name` of `path` by fixed-length strings of `size` bytes holding
// `bytes`: one (scalar) when count is 0, else an array of `count` (the checksum is not updated).
void rewrite_config_string(const std::string& path, const char* name, const std::string& bytes,
                           size_t size, hsize_t count) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t config = H5Gopen2(f, "/config", H5P_DEFAULT);
  ASSERT_GE(H5Adelete(config, name), 0);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, size);
  hid_t space = count == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &count, nullptr);
  hid_t attr = H5Acreate2(config, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(H5Awrite(attr, type, bytes.data()), 0);
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
  H5Gclose(config);
  H5Fclose(f);
}

TEST(TrainCheckpointTest, ConfigDisagreeingWithTheTensorsIsRejected) {
  const std::string good = good_checkpoints("bad_config");
  const std::string bad = copy_as_step(good, 10);
  auto ckpt = load_checkpoint(bad);
  ASSERT_TRUE(ckpt.ok());
  ModelConfig wrong = ckpt->config;
  wrong.ffn_dim = 48;  // the stored MLP weights are [64, 32]
  const std::string json = wrong.to_json();
  rewrite_config_string(bad, "model", json, json.size(), 0);
  resign_config(bad);  // a file written with that config, not a corrupt one
  expect_rejected(good, bad,
                  "dataset /params/layers.0.mlp.w_gate.weight has shape [64, "
                  "32] but the config in the file needs [48, 32]");
}

// A byte flipped inside the model's JSON (topk 3 -> 7: still a valid config, another model)
// fails the /config checksum instead of building that model.
TEST(TrainCheckpointTest, FlippedByteInTheConfigFailsItsChecksum) {
  const std::string good = good_checkpoints("bad_config_byte");
  const std::string bad = copy_as_step(good, 10);
  std::string bytes = file_bytes(bad);
  const std::string field = "\"topk\": 3";
  const size_t at = bytes.find(field);
  ASSERT_NE(at, std::string::npos);
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(at + field.size() - 1));
    f.put('7');
  }
  expect_rejected(good, bad, "checksum mismatch in the /config attributes");
}

// A state dataset of the wrong shape (an array where the step's scalar belongs) is refused by
// name, not read into one integer past its end.
TEST(TrainCheckpointTest, StateDatasetThatIsNotOneIntegerIsRejected) {
  const std::string good = good_checkpoints("bad_state_shape");
  const std::string bad = copy_as_step(good, 10);
  hid_t f = H5Fopen(bad.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(H5Ldelete(f, "/state/step", H5P_DEFAULT), 0);
  const hsize_t n = 100000;
  std::vector<int64_t> big(n, 4);
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t ds =
      H5Dcreate2(f, "/state/step", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, big.data()), 0);
  H5Dclose(ds);
  H5Sclose(space);
  H5Fclose(f);
  expect_rejected(good, bad, "dataset /state/step is not one integer");
}

// A second run in a directory another run is using is refused before it reads or writes anything
// there (two fresh runs both found it empty, then wrote into each other's checkpoints; --keep_last
// pruned the other's). Here this process holds the lock as the other run would.
TEST(TrainCheckpointTest, SecondRunInTheSameDirectoryIsRefusedWhileTheFirstRuns) {
  const std::string dir = fresh_dir("dir_lock");
  const std::string lock = dir + "/.msa-train.lock";
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  ASSERT_EQ(::pwrite(fd, "4242\n", 5, 0), 5);
  for (const bool resume : {false, true}) {
    TrainProgramOptions o = tiny_run(dir, 2);
    o.resume = resume;
    const absl::Status s = run_train_program(o);
    EXPECT_THAT(std::string(s.message()), HasSubstr("--checkpoint_dir=" + dir +
                                                    " is in use by another msa-train run (pid "
                                                    "4242)"))
        << (resume ? "resume" : "fresh");
    EXPECT_TRUE(list_checkpoint_steps(dir).empty()) << "it wrote a checkpoint";
  }
  ::close(fd);  // the other run ended
  ASSERT_TRUE(run_train_program(tiny_run(dir, 2)).ok());
  // ... and this run released the lock when it returned: a resume takes it again.
  TrainProgramOptions more = tiny_run(dir, 3);
  more.resume = true;
  EXPECT_TRUE(run_train_program(more).ok());
  EXPECT_EQ(list_checkpoint_steps(dir).front(), 3);
}

// A /config string attribute holding an array of strings: H5Aread wrote all of them into a
// buffer sized for one (a segfault), crashing --resume instead of skipping the file.
TEST(TrainCheckpointTest, ConfigStringAttributeThatIsNotOneStringIsRejected) {
  const std::string good = good_checkpoints("bad_string_attr");
  const std::string bad = copy_as_step(good, 10);
  const hsize_t n = 20000;  // 40 KB: under HDF5's 64 KB limit for an attribute
  // "11" x n, unterminated fixed-length strings.
  rewrite_config_string(bad, "format_version", std::string(2 * n, '1'), 2, n);
  expect_rejected(good, bad, "/config attribute 'format_version' is not one string");
}

// Replaces float32 dataset `name` of `path` by a well-formed one of `shape` (valid checksum).
void replace_dataset(const std::string& path, const std::string& name, const Shape& shape) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  ASSERT_GE(H5Ldelete(f, name.c_str(), H5P_DEFAULT), 0);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  std::vector<float> data(shape_numel(shape));
  for (size_t i = 0; i < data.size(); ++i) data[i] = 0.01f * static_cast<float>(i % 17);
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t ds =
      H5Dcreate2(f, name.c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), 0);
  // The checksum the reader recomputes: FNV-1a-64 of the stored little-endian bytes.
  const uint64_t sum =
      fnv1a64(std::string(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float)));
  hid_t scalar = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(ds, "fnv1a64", H5T_STD_U64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(H5Awrite(attr, H5T_NATIVE_UINT64, &sum), 0);
  H5Aclose(attr);
  H5Sclose(scalar);
  H5Dclose(ds);
  H5Sclose(space);
  H5Fclose(f);
}

// A checkpoint from before the paper's shared index key head: index_wk of an MSA layer holds one
// key head per KV group, [G * d_I, D] = [2 * 8, 32] (the model's G = 2, d_I = 8, D = 32).
TEST(TrainCheckpointTest, OldPerGroupIndexKeyCheckpointIsRefusedSayingWhy) {
  const std::string dir = fresh_dir("old_index_key"), other = fresh_dir("old_index_key_init");
  ASSERT_TRUE(run_train_program(tiny_run(dir, 2)).ok());
  const std::string path = checkpoint_path(dir, 2);
  const std::string name = "layers.0.attn.index_wk.weight";
  for (const std::string& ds :
       {"/params/" + name, "/optimizer/" + name + "/m", "/optimizer/" + name + "/v"})
    replace_dataset(path, ds, {16, 32});
  const std::string before = file_bytes(path);

  for (bool weights_only : {false, true}) {
    auto r = load_checkpoint(path, weights_only);
    ASSERT_FALSE(r.ok());
    const std::string m(r.status().message());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << m;
    EXPECT_THAT(m, HasSubstr(path));
    EXPECT_THAT(m, HasSubstr("dataset /params/" + name + " has shape [16, 32]"));
    EXPECT_THAT(m, HasSubstr("one index key head per KV group"));
    EXPECT_THAT(m, HasSubstr("single index key head shared by the groups ([8, 32])"));
    EXPECT_THAT(m, HasSubstr("msa-convert"));
    EXPECT_THAT(m, HasSubstr("re-train"));
  }
  // Resume and --init_from fail with the reason, before any training (no new checkpoint), and
  // the file is left as it was.
  TrainProgramOptions resume = tiny_run(dir, 4);
  resume.resume = true;
  absl::Status s = run_train_program(resume);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("one index key head per KV group"));
  TrainProgramOptions init = tiny_run(other, 1);
  init.init_from = path;
  s = run_train_program(init);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("--init_from"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("one index key head per KV group"));
  EXPECT_EQ(list_checkpoint_steps(dir), std::vector<int64_t>{2});
  EXPECT_TRUE(list_checkpoint_steps(other).empty());
  EXPECT_TRUE(file_bytes(path) == before) << "the refused file was modified";
}

TEST(TrainCheckpointTest, ResumeWithDifferentModelFlagsNamesTheField) {
  const std::string good = good_checkpoints("bad_flags");
  const std::string dir = good.substr(0, good.rfind('/'));
  TrainProgramOptions o = tiny_run(dir, 6);
  o.model.d_model = 48;
  o.resume = true;
  absl::Status s = run_train_program(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("d_model: 32 in the checkpoint vs 48"));
  EXPECT_TRUE(load_checkpoint(good).ok());
  // A nested value is named itself (the whole msa block was shown).
  o = tiny_run(dir, 6);
  o.model.msa.index_loss_weight = 0.5;
  o.resume = true;
  s = run_train_program(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("(msa.index_loss_weight: 1.0 in the checkpoint vs 0.5 from the flags)"));
}

TEST(TrainCheckpointTest, ResumeWithoutCheckpointsIsAClearError) {
  TrainProgramOptions o = tiny_run(fresh_dir("empty"), 3);
  o.resume = true;
  absl::Status s = run_train_program(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("no valid checkpoint in"));
}

// ---- what can and cannot be lost (issue 18)
// --------------------------------------------------------------------------

// The case: the directory holds an older, longer run's checkpoints (steps 2, 4, 6) and a
// corrupt file from the future (step 100). A new run with --keep_last=1 must keep what it wrote,
// not prune its own files because higher step numbers exist.
TEST(TrainCheckpointTest, KeepLastNeverDeletesThisRunsCheckpointsForNewerOrCorruptFiles) {
  const std::string dir = fresh_dir("keep_last_foreign");
  TrainProgramOptions old_run = tiny_run(dir, 6);
  old_run.checkpoint_every = 2;
  ASSERT_TRUE(run_train_program(old_run).ok());
  {
    std::ofstream corrupt(checkpoint_path(dir, 100), std::ios::binary);
    corrupt << "not a checkpoint";
  }
  const std::string old_step2 = file_bytes(checkpoint_path(dir, 2));
  // A fresh run would write its steps 1..3 over the old run's 2: refused, nothing touched.
  TrainProgramOptions fresh = tiny_run(dir, 3);
  fresh.seed = 99;
  fresh.checkpoint_every = 1;
  fresh.keep_last = 1;
  const absl::Status refused = run_train_program(fresh);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.message()), HasSubstr("already holds 4 checkpoint(s)"));
  EXPECT_THAT(std::string(refused.message()), HasSubstr("--resume"));
  EXPECT_EQ(file_bytes(checkpoint_path(dir, 2)), old_step2);
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{100, 6, 4, 2}));
  // Continuing it (the corrupt step 100 skipped) prunes only at or below its own newest step.
  TrainProgramOptions o = tiny_run(dir, 8);
  o.resume = true;
  o.checkpoint_every = 1;
  o.keep_last = 1;
  ASSERT_TRUE(run_train_program(o).ok());
  EXPECT_TRUE(load_checkpoint(checkpoint_path(dir, 8)).ok());
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{100, 8}));
}

// A fresh run's save never lands on an existing file: a resumed run whose newest file did not
// validate (it continued from the one before) keeps that file as <name>.invalid and writes its
// own checkpoint of that step.
TEST(TrainCheckpointTest, ResumedRunKeepsTheInvalidFileItsSaveWouldReplace) {
  const std::string dir = fresh_dir("move_aside_invalid");
  TrainProgramOptions first = tiny_run(dir, 4);
  first.checkpoint_every = 2;
  ASSERT_TRUE(run_train_program(first).ok());
  const std::string four = checkpoint_path(dir, 4);
  ASSERT_EQ(::truncate(four.c_str(), 1000), 0);
  const std::string corrupt = file_bytes(four);
  TrainProgramOptions o = tiny_run(dir, 6);
  o.resume = true;
  o.checkpoint_every = 2;
  ASSERT_TRUE(run_train_program(o).ok());  // resumes from step 2
  EXPECT_TRUE(load_checkpoint_of_step(four, 4).ok());
  EXPECT_EQ(file_bytes(four + ".invalid"), corrupt);
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{6, 4, 2}));
}

// Only the names checkpoint_path writes are checkpoints: a "ckpt-6.h5" beside
// "ckpt-00000006.h5" is not a second step 6 (pruning the duplicate deleted the real file, and
// then every other one).
TEST(TrainCheckpointTest, OnlyCanonicalNamesAreListed) {
  const std::string dir = fresh_dir("canonical_names");
  for (const char* name : {"ckpt-6.h5", "ckpt-000000006.h5", "ckpt--0000001.h5",
                           "ckpt-00000002.h5.tmp", "ckpt-00000003.h5"})
    std::ofstream(dir + "/" + name) << "x";
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{3}));
  const std::string run_dir = fresh_dir("canonical_names_run");
  std::ofstream(run_dir + "/ckpt-6.h5") << "x";
  TrainProgramOptions o = tiny_run(run_dir, 6);
  o.checkpoint_every = 3;
  o.keep_last = 1;
  ASSERT_TRUE(run_train_program(o).ok());
  EXPECT_TRUE(load_checkpoint_of_step(checkpoint_path(run_dir, 6), 6).ok());
  EXPECT_EQ(list_checkpoint_steps(run_dir), (std::vector<int64_t>{6}));
}

// A checkpoint copied to another step's name (state says 4, the name 9) is not that step: resume
// skips it for the newest file whose name and contents agree, and --keep_last does not count it.
TEST(TrainCheckpointTest, FileWhoseStepDisagreesWithItsNameIsSkipped) {
  const std::string good = good_checkpoints("renamed_step");  // steps 2 and 4
  const std::string dir = good.substr(0, good.rfind('/'));
  const std::string renamed = copy_as_step(checkpoint_path(dir, 2), 9);
  auto r = load_checkpoint_of_step(renamed, 9);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("holds step 2 (/state/step), not the step 9"));
  auto latest = load_latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->path, good);
  ASSERT_TRUE(prune_checkpoints(dir, 1, 4).ok());
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{9, 4}));
}

// A file that does not validate is neither counted as one of the --keep_last checkpoints nor
// deleted: with keep_last=2 and a corrupt step 5 between this run's 4 and 6, both 4 and 6 stay.
TEST(TrainCheckpointTest, KeepLastCountsOnlyCheckpointsThatValidate) {
  const std::string dir = fresh_dir("keep_last_corrupt_between");
  TrainProgramOptions first = tiny_run(dir, 2);
  first.checkpoint_every = 2;
  ASSERT_TRUE(run_train_program(first).ok());
  {
    std::ofstream corrupt(checkpoint_path(dir, 5), std::ios::binary);
    corrupt << "truncated";
  }
  TrainProgramOptions o = tiny_run(dir, 6);
  o.resume = true;  // from step 2: step 5 does not validate
  o.checkpoint_every = 2;
  o.keep_last = 2;
  ASSERT_TRUE(run_train_program(o).ok());
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{6, 5, 4}));
  EXPECT_TRUE(load_checkpoint(checkpoint_path(dir, 6)).ok());
  EXPECT_TRUE(load_checkpoint(checkpoint_path(dir, 4)).ok());
}

// prune_checkpoints itself: nothing above newest_valid goes, and it refuses to act on a
// newest_valid that does not validate.
TEST(TrainCheckpointTest, PruneNeverDeletesAboveTheNewestValidatedStep) {
  const std::string good = good_checkpoints("prune_direct");  // steps 2 and 4
  const std::string dir = good.substr(0, good.rfind('/'));
  copy_as_valid_step(good, 3);
  copy_as_valid_step(good, 9);
  ASSERT_TRUE(prune_checkpoints(dir, 1, 3).ok());
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{9, 4, 3}));
  {
    std::ofstream corrupt(checkpoint_path(dir, 7), std::ios::binary);
    corrupt << "x";
  }
  EXPECT_FALSE(prune_checkpoints(dir, 1, 7).ok());
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{9, 7, 4, 3}));
  ASSERT_TRUE(prune_checkpoints(dir, 1, 9).ok());
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{9, 7}));  // 7 does not validate
}

// Writes `value` into element 5 of float32 dataset `name` of `path` and re-signs the checksum, so
// only the finiteness check can tell.
void poison_dataset(const std::string& path, const std::string& name, float value) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t ds = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
  ASSERT_GE(ds, 0);
  hid_t space = H5Dget_space(ds);
  std::vector<float> data(H5Sget_simple_extent_npoints(space));
  ASSERT_GT(data.size(), 5u);
  ASSERT_GE(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), 0);
  data[5] = value;
  ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), 0);
  const uint64_t sum =
      fnv1a64(std::string(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float)));
  hid_t attr = H5Aopen(ds, "fnv1a64", H5P_DEFAULT);
  ASSERT_GE(H5Awrite(attr, H5T_NATIVE_UINT64, &sum), 0);
  H5Aclose(attr);
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(f);
}

TEST(TrainCheckpointTest, NonFiniteMomentIsRejectedNamingTheDataset) {
  const std::string good = good_checkpoints("bad_nan_moment");
  const std::string bad = copy_as_step(good, 10);
  poison_dataset(bad, "/optimizer/layers.1.mlp.w_up.weight/v", std::nanf(""));
  expect_rejected(good, bad,
                  "dataset /optimizer/layers.1.mlp.w_up.weight/v holds a non-finite value");
}

TEST(TrainCheckpointTest, InfiniteParameterIsRejectedEvenWeightsOnly) {
  const std::string good = good_checkpoints("bad_inf_param");
  const std::string bad = copy_as_step(good, 10);
  poison_dataset(bad, "/params/embed.weight", INFINITY);
  auto r = load_checkpoint(bad, /*weights_only=*/true);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(bad));
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("dataset /params/embed.weight holds a non-finite value (inf"));
}

TEST(TrainCheckpointTest, SaveRefusesNonFiniteState) {
  const std::string good = good_checkpoints("save_nan");
  const std::string dir = good.substr(0, good.rfind('/'));
  auto ckpt = load_checkpoint(good);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  Checkpoint nan_weights = *ckpt;
  nan_weights.params.at("final_norm.weight").data<float>()[1] = std::nanf("");
  absl::Status s = save_checkpoint(checkpoint_path(dir, 7), nan_weights);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("/params/final_norm.weight"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("non-finite"));
  auto nan_moment = load_checkpoint(good);  // (tensor copies share storage: a fresh load)
  ASSERT_TRUE(nan_moment.ok()) << nan_moment.status();
  nan_moment->m.at("embed.weight").data<float>()[0] = -INFINITY;
  s = save_checkpoint(checkpoint_path(dir, 7), *nan_moment);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("/optimizer/embed.weight/m"));
  EXPECT_EQ(list_checkpoint_steps(dir), (std::vector<int64_t>{4, 2}));  // nothing written
  struct stat st;
  EXPECT_NE(::stat((checkpoint_path(dir, 7) + ".tmp").c_str(), &st), 0);
}

// A learning rate that is finite but absurd makes the weights blow up after the first step: the
// following steps have a non-finite loss; they are not applied and write no checkpoint (their
// files, under newer step numbers, once pushed the good ones out under --keep_last), and after
// --max_nonfinite_steps of them in a row the run fails, naming the flag and the newest checkpoint.
TEST(TrainCheckpointTest, NonFiniteStepsAreSkippedThenTheRunStops) {
  const std::string dir = fresh_dir("diverge");
  TrainProgramOptions o = tiny_run(dir, 20);
  o.trainer.lr.max_lr = 1e37;
  o.trainer.lr.min_lr = 1e37;
  o.trainer.lr.warmup_steps = 0;
  o.checkpoint_every = 1;
  o.trainer.max_nonfinite_steps = 3;
  absl::Status s = run_train_program(o);
  ASSERT_FALSE(s.ok()) << "a diverged run ended successfully";
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("not finite for 3 steps in a row"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("--max_nonfinite_steps=3"));
  const std::vector<std::string> log = lines(dir + "/metrics.jsonl");
  ASSERT_GE(log.size(), 3u);
  // log[i] is step i + 1. The three skipped steps in a row are logged (none checkpointed), the
  // third too (its line was missing): the run ends after it.
  size_t first = 0;
  while (first < log.size() && log[first].find("\"skipped\":true") == std::string::npos) ++first;
  ASSERT_LT(first, log.size()) << "no step was skipped";
  ASSERT_GE(first, 1u);
  ASSERT_EQ(log.size(), first + 3);
  EXPECT_THAT(log[first + 1], HasSubstr("\"skipped\":true"));
  EXPECT_THAT(log[first + 2], HasSubstr("\"skipped\":true"));
  const int64_t last_applied = static_cast<int64_t>(first);  // the step of log[first - 1]
  const std::vector<int64_t> steps = list_checkpoint_steps(dir);
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.front(), last_applied) << "a checkpoint of a skipped step was written";
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("The newest checkpoint is " + checkpoint_path(dir, last_applied)));
  ASSERT_TRUE(load_checkpoint(checkpoint_path(dir, last_applied)).ok());
}

// Adam counts the updates a parameter received: a run whose step s was skipped (forced through
// MSA_TEST_NONFINITE_STEP) ends one step later with exactly the weights and moments of a run
// without it, on one repeated batch at a constant lr, with or without the frozen warm-up and with
// the skip inside it. Counting the skipped step made the next updates up to ~0.5x too small. A run
// stopped at step 2, after the skip, and resumed ends the same, bit for bit (the counts are in the
// checkpoint).
TEST(TrainCheckpointTest, SkippedStepsAreNotCountedByAdam) {
  struct Case {
    int64_t warmup, skip, warmup_without;
  };
  for (const Case& c : {Case{0, 2, 0}, Case{1, 2, 1}, Case{2, 1, 1}}) {
    SCOPED_TRACE(absl::StrFormat("warm-up %d, step %d skipped", c.warmup, c.skip));
    auto run = [&](const std::string& name, int64_t steps, int64_t warmup, int64_t skip,
                   int64_t exit_after, bool resume, const std::string& reuse_dir = "") {
      const std::string dir = reuse_dir.empty() ? fresh_dir(name) : reuse_dir;
      TrainProgramOptions o = tiny_run(dir, steps);
      o.data = "synthetic:repeat";
      o.trainer.lr.max_lr = o.trainer.lr.min_lr = 3e-3;
      o.trainer.lr.warmup_steps = 0;
      o.trainer.recall_every = 0;
      o.trainer.index_warmup_steps = warmup;
      o.dense_attention_steps = 0;
      o.exit_after_step = exit_after;
      o.resume = resume;
      if (skip > 0) ::setenv("MSA_TEST_NONFINITE_STEP", std::to_string(skip).c_str(), 1);
      const absl::Status s = run_train_program(o);
      ::unsetenv("MSA_TEST_NONFINITE_STEP");
      EXPECT_TRUE(s.ok()) << s;
      return dir;
    };
    const std::string with = run("adam_skip", 3, c.warmup, c.skip, 0, false);
    const std::string without = run("adam_noskip", 2, c.warmup_without, 0, 0, false);
    const std::string split =
        run("adam_split", 3, c.warmup, c.skip, std::max<int64_t>(c.skip, 2), false);
    run("", 3, c.warmup, 0, 0, true, split);
    auto a = load_checkpoint(checkpoint_path(with, 3));
    auto b = load_checkpoint(checkpoint_path(without, 2));
    auto r = load_checkpoint(checkpoint_path(split, 3));
    ASSERT_TRUE(a.ok() && b.ok() && r.ok()) << a.status() << b.status() << r.status();
    EXPECT_EQ(a->state.skipped_steps, 1);
    EXPECT_EQ(a->state.skipped_warmup_steps, c.skip <= c.warmup ? 1 : 0);
    int compared = 0;
    auto same = [&](const std::map<std::string, Tensor>& x, const std::map<std::string, Tensor>& y,
                    const char* what) {
      for (const auto& [name, t] : x) {
        const Tensor& u = y.at(name);
        ASSERT_EQ(t.numel(), u.numel()) << what << " " << name;
        for (int64_t i = 0; i < t.numel(); ++i)
          ASSERT_EQ(t.data<float>()[i], u.data<float>()[i])
              << what << " " << name << " [" << i << "]";
        ++compared;
      }
    };
    for (const Checkpoint* other : {&*b, &*r}) {
      same(a->params, other->params, "weights");
      same(a->m, other->m, "m");
      same(a->v, other->v, "v");
    }
    EXPECT_GT(compared, 0);
  }
}

// A run resumed with a longer frozen warm-up after a skip: the backbone's count (derived from the
// warm-up length) reached 0 and aborted in adamw_update; it stays at least 1.
TEST(TrainCheckpointTest, ALongerWarmUpOnResumeAfterASkipTrainsOn) {
  const std::string dir = fresh_dir("adam_skip_warmup");
  TrainProgramOptions o = tiny_run(dir, 7);
  o.trainer.recall_every = 0;
  o.trainer.index_warmup_steps = 2;
  o.exit_after_step = 5;
  ::setenv("MSA_TEST_NONFINITE_STEP", "4", 1);
  absl::Status s = run_train_program(o);
  ::unsetenv("MSA_TEST_NONFINITE_STEP");
  ASSERT_TRUE(s.ok()) << s;
  o.trainer.index_warmup_steps = 5;
  o.exit_after_step = 0;
  o.resume = true;
  s = run_train_program(o);
  EXPECT_TRUE(s.ok()) << s;
  auto c = load_checkpoint(checkpoint_path(dir, 7));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state.skipped_steps, 1);
  EXPECT_EQ(c->state.skipped_warmup_steps, 0);
}

// ---- the seed on resume
// --------------------------------------------------------------------------

// A run started with --seed=7 and resumed without --seed continues with seed 7 (the checkpoint's),
// bit for bit; before, the default seed silently replaced it and the data changed mid-run.
TEST(TrainCheckpointTest, ResumeWithoutSeedKeepsTheCheckpointsSeed) {
  const std::string straight = fresh_dir("seed_straight"), split = fresh_dir("seed_split");
  TrainProgramOptions a = tiny_run(straight, 6);
  a.seed = 7;
  a.explicit_seed = true;
  ASSERT_TRUE(run_train_program(a).ok());
  TrainProgramOptions first = tiny_run(split, 6);
  first.seed = 7;
  first.explicit_seed = true;
  first.exit_after_step = 3;
  ASSERT_TRUE(run_train_program(first).ok());
  TrainProgramOptions second = tiny_run(split, 6);  // seed: the default, not given
  second.resume = true;
  ASSERT_TRUE(run_train_program(second).ok());
  EXPECT_EQ(lines(straight + "/metrics.jsonl"), lines(split + "/metrics.jsonl"));
  auto c = load_checkpoint(checkpoint_path(split, 6));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state.seed, 7);
}

TEST(TrainCheckpointTest, ResumeWithAnotherExplicitSeedIsRefusedNamingBoth) {
  const std::string dir = fresh_dir("seed_refused");
  TrainProgramOptions first = tiny_run(dir, 4);
  first.seed = 7;
  first.exit_after_step = 2;
  ASSERT_TRUE(run_train_program(first).ok());
  TrainProgramOptions second = tiny_run(dir, 4);
  second.seed = 8;
  second.explicit_seed = true;
  second.resume = true;
  const absl::Status s = run_train_program(second);
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("written by a run with --seed=7, but --seed=8"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("--reseed"));
  EXPECT_EQ(list_checkpoint_steps(dir), std::vector<int64_t>{2}) << "the refused run trained";
  // The same seed given explicitly is no change.
  second.seed = 7;
  EXPECT_TRUE(run_train_program(second).ok());
}

// --reseed continues the weights and optimizer with the new seed's samples from the next step on,
// and the checkpoints it writes carry the new seed.
TEST(TrainCheckpointTest, ReseedContinuesWithTheNewSeed) {
  const std::string straight = fresh_dir("reseed_straight"), dir = fresh_dir("reseed");
  TrainProgramOptions a = tiny_run(straight, 4);
  a.seed = 7;
  ASSERT_TRUE(run_train_program(a).ok());
  TrainProgramOptions first = tiny_run(dir, 4);
  first.seed = 7;
  first.exit_after_step = 2;
  ASSERT_TRUE(run_train_program(first).ok());
  TrainProgramOptions second = tiny_run(dir, 4);
  second.seed = 8;
  second.explicit_seed = true;
  second.reseed = true;
  second.resume = true;
  ASSERT_TRUE(run_train_program(second).ok());
  auto c = load_checkpoint(checkpoint_path(dir, 4));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state.seed, 8);
  EXPECT_EQ(c->state.sample_cursor, 8);  // the cursor goes on; only the samples change
  const auto x = lines(straight + "/metrics.jsonl"), y = lines(dir + "/metrics.jsonl");
  ASSERT_EQ(x.size(), 4u);
  ASSERT_EQ(y.size(), 4u);
  EXPECT_EQ(x[1], y[1]);  // before the resume: the same run
  EXPECT_NE(x[2], y[2]);  // after it: other samples
  // --reseed means nothing without --resume and a new --seed.
  TrainProgramOptions fresh = tiny_run(fresh_dir("reseed_fresh"), 1);
  fresh.reseed = true;
  fresh.seed = 8;
  fresh.explicit_seed = true;
  EXPECT_THAT(std::string(run_train_program(fresh).message()), HasSubstr("invalid --reseed"));
}

}  // namespace
}  // namespace msa
