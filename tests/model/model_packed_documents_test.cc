// Packed documents (msa-train --pack_documents, model/document_segments.h): a batch whose rows hold
// several documents gives exactly the losses and parameter gradients of running each document as
// its own sequence (f64 on the CPU): dense, MSA sparse, MSA warm-up and hybrid stacks, with and
// without recomputation. The documents are shorter than a block (3 tokens, block 4), span several
// blocks with a sparse selection (13 tokens = 4 blocks, top-2), or fill a whole row.
#include <cmath>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "kernels/rope.h"
#include "model/segmented_kernels.h"
#include "model/transformer.h"
#include "tests/testing/gradcheck.h"

namespace msa {
namespace {

constexpr int64_t kT = 24;
// Row 0: documents of 3, 13 and 8 tokens; row 1: 9 and 15.
const std::vector<std::vector<int64_t>> kStarts = {{0, 3, 16}, {0, 9}};

ModelConfig config(const std::string& kind) {
  ModelConfig c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.ffn_dim = 12;
  c.rope_theta = 100.0;  // every position rotates visibly
  if (kind == "dense") c.attention = {AttentionKind::kDense, AttentionKind::kDense};
  if (kind == "msa") c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
  if (kind == "hybrid") c.attention = {AttentionKind::kDense, AttentionKind::kMsa};
  c.msa.block_size = 4;
  c.msa.topk = 2;
  c.msa.index_dim = 4;
  // The index-RoPE option with packed documents: losses and gradients equal the documents run
  // alone. (RoPE scores depend only on position differences, so these cannot show where positions
  // start; RopePositionsRestartAtEachDocument shows that for the rotation itself.)
  if (kind == "msa_index_rope") {
    c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
    c.msa.index_rotary_dim = 2;
  }
  c.msa.index_loss_weight = 0.7;
  return c;
}

// Larger, non-symmetric weights so every path carries signal.
void randomize(Transformer& model, uint64_t seed) {
  int i = 0;
  for (Parameter& p : model.params().all()) {
    fill_normal(p.value, seed + i++, 0.0f, 0.5f);
    if (p.spec.init == ParamInit::kOnes) {
      double* v = p.value.data<double>();
      for (int64_t j = 0; j < p.value.numel(); ++j) v[j] += 1.0;
    }
  }
}

struct Rows {
  std::vector<int32_t> tokens, targets;  // [2, kT]
};

Rows random_rows(const ModelConfig& c) {
  Rows r;
  for (int64_t i = 0; i < 2 * kT; ++i) {
    r.tokens.push_back(static_cast<int32_t>(philox4x32(5, i).v[0] % c.vocab_size));
    r.targets.push_back(static_cast<int32_t>(philox4x32(5, i).v[1] % c.vocab_size));
  }
  r.targets[5] = kIgnoreIndex;  // one ignored target inside a document
  return r;
}

struct Outcome {
  double lm_loss = 0, index_loss = 0;
  std::vector<double> layer_index_loss, index_recall, block_recall, index_recall_ceiling;
  std::vector<Tensor> grads;  // every parameter's, in params().all() order
};

std::vector<Tensor> grads_of(Transformer& model) {
  std::vector<Tensor> g;
  for (const Parameter& p : model.params().all()) g.push_back(p.grad.clone());
  return g;
}

ForwardOptions options_for(MsaMode mode) {
  ForwardOptions o;
  o.msa_mode = mode;
  o.recall_query_stride = 1;  // every query: the packed recall is the token-weighted mean
  return o;
}

// The packed batch in one forward / backward; `packed` false ignores the documents.
Outcome run_packed(Transformer& model, const Rows& rows, MsaMode mode, bool packed) {
  ForwardOptions o = options_for(mode);
  if (packed)
    o.documents = std::make_shared<DocumentSegments>(DocumentSegments::from_starts(2, kT, kStarts));
  model.params().zero_grads();
  const ForwardResult r = model.forward(Tensor::from_vector<int32_t>({2, kT}, rows.tokens),
                                        Tensor::from_vector<int32_t>({2, kT}, rows.targets), o);
  model.backward(1.0);
  return {r.lm_loss,      r.index_loss,           r.layer_index_loss, r.index_recall,
          r.block_recall, r.index_recall_ceiling, grads_of(model)};
}

// Each document as its own [1, L] sequence; losses and gradients weighted as the packed batch
// weighs them (LM loss: by counted targets; index loss: by tokens, every token has G rows).
Outcome run_separately(Transformer& model, const Rows& rows, MsaMode mode) {
  const DocumentSegments docs = DocumentSegments::from_starts(2, kT, kStarts);
  int64_t all_targets = 0;
  for (int32_t y : rows.targets) all_targets += y != kIgnoreIndex;
  const double all_tokens = 2.0 * kT;
  Outcome out;
  model.params().zero_grads();
  for (const DocumentSegment& s : docs.segments()) {
    const int64_t L = s.length(), first = s.first_token(kT);
    const std::vector<int32_t> tok(rows.tokens.begin() + first, rows.tokens.begin() + first + L),
        tgt(rows.targets.begin() + first, rows.targets.begin() + first + L);
    const ForwardResult r =
        model.forward(Tensor::from_vector<int32_t>({1, L}, tok),
                      Tensor::from_vector<int32_t>({1, L}, tgt), options_for(mode));
    const double lm_share = static_cast<double>(r.n_targets) / all_targets;
    const double index_share = L / all_tokens;
    model.backward(lm_share, index_share, /*backbone=*/true);
    out.lm_loss += r.lm_loss * lm_share;
    out.index_loss += r.index_loss * index_share;
    out.layer_index_loss.resize(r.layer_index_loss.size());
    out.index_recall.resize(r.index_recall.size());
    out.block_recall.resize(r.block_recall.size());
    out.index_recall_ceiling.resize(r.index_recall_ceiling.size());
    for (size_t l = 0; l < r.layer_index_loss.size(); ++l)
      out.layer_index_loss[l] += r.layer_index_loss[l] * index_share;
    // Recall over every query (stride 1): the mean over tokens.
    for (size_t l = 0; l < r.index_recall.size(); ++l)
      out.index_recall[l] += r.index_recall[l] * index_share;
    for (size_t l = 0; l < r.block_recall.size(); ++l)
      out.block_recall[l] += r.block_recall[l] * index_share;
    for (size_t l = 0; l < r.index_recall_ceiling.size(); ++l)
      out.index_recall_ceiling[l] += r.index_recall_ceiling[l] * index_share;
  }
  out.grads = grads_of(model);
  return out;
}

// The largest gradient difference over all parameters, each on its own scale.
double worst_gradient_error(Transformer& model, const Outcome& a, const Outcome& b,
                            std::string* where) {
  double worst = 0;
  const auto& params = model.params().all();
  for (size_t i = 0; i < params.size(); ++i) {
    const double e = test::max_scaled_diff(a.grads[i], b.grads[i]);
    if (!(e <= worst)) {  // NaN or larger
      worst = e;
      *where = params[i].spec.name;
    }
  }
  return worst;
}

void expect_close_vectors(const std::vector<double>& a, const std::vector<double>& b,
                          const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12) << what << " " << i;
}

struct Case {
  std::string kind;
  MsaMode mode;
  Recompute recompute;
};

std::string case_string(const Case& k) {
  return k.kind + (k.mode == MsaMode::kSparse ? "_sparse" : "_warmup") +
         (k.recompute == Recompute::kNone
              ? ""
              : std::string("_recompute_") + recompute_name(k.recompute));
}
std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return case_string(info.param);
}
void PrintTo(const Case& k, std::ostream* os) { *os << case_string(k); }

class PackedDocumentsTest : public ::testing::TestWithParam<Case> {};

TEST_P(PackedDocumentsTest, PackedBatchEqualsDocumentsRunSeparately) {
  const Case& k = GetParam();
  const ModelConfig c = config(k.kind);
  Transformer model(c, DType::kF64, Device::kCPU);
  model.set_recompute(k.recompute);
  randomize(model, 17);
  const Rows rows = random_rows(c);
  const Outcome packed = run_packed(model, rows, k.mode, true);
  const Outcome separate = run_separately(model, rows, k.mode);
  EXPECT_NEAR(packed.lm_loss, separate.lm_loss, 1e-12);
  EXPECT_NEAR(packed.index_loss, separate.index_loss, 1e-12);
  expect_close_vectors(packed.layer_index_loss, separate.layer_index_loss, "layer index loss");
  expect_close_vectors(packed.index_recall, separate.index_recall, "index recall");
  expect_close_vectors(packed.block_recall, separate.block_recall, "block recall");
  expect_close_vectors(packed.index_recall_ceiling, separate.index_recall_ceiling,
                       "index recall ceiling");
  if (c.any_msa()) {
    EXPECT_GT(packed.index_loss, 1e-3);  // the index branch is exercised
  }
  std::string where;
  const double err = worst_gradient_error(model, packed, separate, &where);
  EXPECT_LT(err, 1e-10) << "worst gradient: " << where;
}

// The comparison above can fail: the same batch with its documents ignored (each row one
// sequence) differs from the separate runs in the losses and in the gradients.
TEST_P(PackedDocumentsTest, IgnoringTheDocumentsDiffers) {
  const Case& k = GetParam();
  const ModelConfig c = config(k.kind);
  Transformer model(c, DType::kF64, Device::kCPU);
  model.set_recompute(k.recompute);
  randomize(model, 17);
  const Rows rows = random_rows(c);
  const Outcome unpacked = run_packed(model, rows, k.mode, false);
  const Outcome separate = run_separately(model, rows, k.mode);
  EXPECT_GT(std::abs(unpacked.lm_loss - separate.lm_loss), 1e-6);
  std::string where;
  EXPECT_GT(worst_gradient_error(model, unpacked, separate, &where), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Stacks, PackedDocumentsTest,
    ::testing::Values(Case{"dense", MsaMode::kSparse, Recompute::kNone},
                      Case{"msa", MsaMode::kSparse, Recompute::kNone},
                      Case{"msa", MsaMode::kDenseWarmup, Recompute::kNone},
                      Case{"hybrid", MsaMode::kSparse, Recompute::kNone},
                      Case{"hybrid", MsaMode::kDenseWarmup, Recompute::kNone},
                      Case{"msa", MsaMode::kSparse, Recompute::kAttention},
                      Case{"msa_index_rope", MsaMode::kSparse, Recompute::kNone},
                      Case{"msa_index_rope", MsaMode::kDenseWarmup, Recompute::kNone},
                      Case{"hybrid", MsaMode::kSparse, Recompute::kFull}),
    case_name);

// RoPE positions restart at each document: each document's rotation is that of the document run
// alone (bit for bit), forward and backward. (The losses cannot show this: RoPE scores depend
// only on t - s, so a shifted document attends the same up to rounding.)
TEST(PackedDocumentsSegmentsTest, RopePositionsRestartAtEachDocument) {
  const DocumentSegments docs = DocumentSegments::from_starts(2, kT, kStarts);
  const RopeConfig rope(100.0);
  const Tensor x = test::random_tensor({2, kT, 3, 4}, 31);
  Tensor y = Tensor::empty(x.shape(), DType::kF64), whole = Tensor::empty(x.shape(), DType::kF64);
  segmented_rope_forward(&docs, x, rope, y);
  rope_forward(x, rope, whole);
  Tensor dx = Tensor::empty(x.shape(), DType::kF64);
  segmented_rope_backward(&docs, x, rope, dx);
  const std::vector<double> xv = x.to_double_vector(), yv = y.to_double_vector(),
                            wv = whole.to_double_vector(), dxv = dx.to_double_vector();
  for (const DocumentSegment& s : docs.segments()) {
    const int64_t L = s.length(), first = s.first_token(kT) * 12, n = L * 12;
    const Tensor alone = Tensor::from_vector<double>(
        {1, L, 3, 4}, std::vector<double>(xv.begin() + first, xv.begin() + first + n));
    Tensor ya = Tensor::empty(alone.shape(), DType::kF64), da = ya.clone();
    rope_forward(alone, rope, ya);
    rope_backward(alone, rope, da);
    EXPECT_EQ(ya.to_double_vector(),
              std::vector<double>(yv.begin() + first, yv.begin() + first + n))
        << "document at row " << s.row << " position " << s.begin;
    EXPECT_EQ(da.to_double_vector(),
              std::vector<double>(dxv.begin() + first, dxv.begin() + first + n));
    // Only documents starting at 0 rotate as in the unpacked row.
    EXPECT_EQ(s.begin == 0, ya.to_double_vector() ==
                                std::vector<double>(wv.begin() + first, wv.begin() + first + n));
  }
}

// One document per row is the unpacked batch: the same kernels run on whole rows.
TEST(PackedDocumentsSegmentsTest, OneDocumentPerRowIsNoSplit) {
  EXPECT_FALSE(DocumentSegments::from_starts(2, 5, {{0}, {0}}).any_split());
  const DocumentSegments d = DocumentSegments::from_starts(2, 5, {{0}, {0, 4}});
  EXPECT_TRUE(d.any_split());
  ASSERT_EQ(d.segments().size(), 3u);
  EXPECT_EQ(d.segments()[2].row, 1);
  EXPECT_EQ(d.segments()[2].begin, 4);
  EXPECT_EQ(d.segments()[2].end, 5);
  EXPECT_EQ(d.segments()[2].first_token(5), 9);
}

}  // namespace
}  // namespace msa
