// BatchSource over token shards: each sequence is one window of the
// WindowSampler.
#include <fstream>
#include <iterator>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/document_starts.h"
#include "data/json_file.h"
#include "data/shard.h"
#include "data/window_sampler.h"
#include "model/parameters.h"
#include "nlohmann/json.hpp"
#include "train/batch_source.h"

namespace msa {
namespace {

class ShardSource : public BatchSource {
 public:
  ShardSource(std::unique_ptr<WindowSampler> sampler, int64_t batch, const DataLayout& layout,
              bool validation, std::optional<int32_t> eos_id)
      : sampler_(std::move(sampler)),
        batch_(batch),
        layout_(layout),
        validation_(validation),
        eos_id_(eos_id) {}

  Batch get(int64_t step, int micro) override {
    const int64_t T = sampler_->seq_len();
    Batch b{
        Tensor::empty({batch_, T}, DType::kI32), Tensor::empty({batch_, T}, DType::kI32), {}, {}};
    std::vector<int32_t> window(T + 1);
    for (int64_t i = 0; i < batch_; ++i) {
      const int64_t w =
          validation_
              // Each data-parallel rank its own rows of the held-out batch, as in training.
              ? sampler_->val_window(((step - 1) * layout_.dp_size + layout_.dp_rank) * batch_ + i)
              : sampler_->train_window(sample_number(step, micro, layout_.grad_accum,
                                                     layout_.dp_rank, layout_.dp_size, batch_, i,
                                                     layout_.base_step, layout_.base_sample));
      sampler_->read_window(w, window.data());
      std::copy(window.begin(), window.end() - 1, b.tokens.data<int32_t>() + i * T);
      std::copy(window.begin() + 1, window.end(), b.targets.data<int32_t>() + i * T);
      // The target of a document's last token (its EOS) is the next document's first token. It
      // stays a target, as in Megatron-LM (eod_mask_loss off): the EOS position sees only its own
      // document, so it learns which tokens start a document (there is no BOS to condition on),
      // and packed and unpacked runs count the same targets.
      if (eos_id_)
        b.doc_starts.push_back(document_starts(absl::MakeConstSpan(window.data(), T), *eos_id_));
    }
    return b;
  }

  int64_t distinct_batches() const override {
    // Whole batches only: a partial last one would read windows again (so would any batch of a
    // split smaller than one).
    const int64_t global = batch_ * layout_.dp_size;
    return validation_ ? sampler_->num_val_windows() / global : -1;
  }

  std::string data_identity() const override {
    int64_t tokens = 0;
    std::string sizes;
    for (const auto& shard : sampler_->shards()) {
      tokens += shard->size();
      absl::StrAppend(&sizes, shard->size(), ",");
    }
    return absl::StrFormat("%d shard(s), %d tokens (sizes hash %016x)", sampler_->shards().size(),
                           tokens, fnv1a64(sizes));
  }

  std::string data_metadata() const override {
    std::vector<std::string> paths;
    for (const auto& shard : sampler_->shards()) paths.push_back(shard->path());
    std::string whole, content;
    for (const std::string& m : shard_metadata_files(paths)) {
      std::ifstream in(m, std::ios::binary);
      if (!in) continue;
      const std::string text(std::istreambuf_iterator<char>(in), {});
      absl::StrAppend(&whole, text, "\n");
      absl::StrAppend(&content, metadata_content(text), "\n");
    }
    if (whole.empty()) return "";
    return absl::StrFormat("content %016x, file %016x", fnv1a64(content), fnv1a64(whole));
  }

  std::string describe() const override {
    return absl::StrFormat("%s (%s split%s)", sampler_->describe(),
                           validation_ ? "validation" : "training",
                           eos_id_ ? absl::StrFormat(", documents packed: EOS %d", *eos_id_) : "");
  }

 private:
  std::unique_ptr<WindowSampler> sampler_;
  int64_t batch_;
  DataLayout layout_;
  bool validation_;
  std::optional<int32_t> eos_id_;  // packing documents: the id that ends each one
};

}  // namespace

std::string metadata_content(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return text;
  // Where the inputs and the tokenizer were read from says nothing about the tokens: shards
  // rebuilt from ./a.txt instead of a.txt, or on another node, are the same data. An input's
  // path goes only where its content hash stands for it (older files recorded none).
  j.erase("tokenizer_path");
  if (j.contains("inputs") && j["inputs"].is_array())
    for (nlohmann::json& in : j["inputs"])
      if (in.is_object() && in.contains("fnv1a64")) in.erase("path");
  return j.dump();
}

bool same_data_metadata(const std::string& was, const std::string& now) {
  // "content C, file F" since the content hash; a bare hash of the whole files before it.
  auto part = [](const std::string& v, const std::string& name) {
    const size_t at = v.find(name + " ");
    if (at == std::string::npos) return std::string();
    return v.substr(at + name.size() + 1, 16);
  };
  // Byte-identical metadata files are the same data whatever the content hash made of them (its
  // definition changed: files without input hashes keep their paths in it).
  if (was.rfind("content ", 0) == 0)
    return part(was, "content") == part(now, "content") || part(was, "file") == part(now, "file");
  return was == part(now, "file");
}

absl::Status check_shard_metadata(const std::vector<std::string>& shard_paths, int64_t seq_len) {
  // What says which text an id stands for, per msa-data metadata file: for text shards the
  // tokenizer's fingerprint (files written before it: its description), for synthetic shards
  // their own fixed vocabulary. Whether BOS is added, or which id ends a document, changes no
  // id's meaning.
  struct Vocabulary {
    std::string file, kind, fingerprint, description;
  };
  std::vector<Vocabulary> seen;
  for (const std::string& file : shard_metadata_files(shard_paths)) {
    const absl::StatusOr<nlohmann::json> j = read_json_file(file);
    if (!j.ok() || !j->is_object()) continue;
    const auto text = [&](const char* key) {
      return j->contains(key) && (*j)[key].is_string() ? (*j)[key].get<std::string>() : "";
    };
    const std::string written_by = text("written_by");
    if (written_by.rfind("msa-data", 0) != 0) continue;  // not msa-data's: nothing to compare
    const bool synthetic = written_by == "msa-data synthetic";
    if (const nlohmann::json n = j->value("seq_len", nlohmann::json());
        synthetic && n.is_number_integer() && n.get<int64_t>() != seq_len)
      return absl::InvalidArgumentError(absl::StrFormat(
          "the synthetic shards of %s hold samples of %d tokens, one per window only at "
          "--seq_len=%d, not %d (other windows cut samples apart, their facts from their "
          "queries)",
          file, n.get<int64_t>(), n.get<int64_t>(), seq_len));
    Vocabulary v{file, synthetic ? "synthetic" : "text", text("tokenizer_fingerprint"),
                 text("tokenizer")};
    for (const Vocabulary& u : seen) {
      std::string why;
      if (u.kind != v.kind)
        why = absl::StrFormat("%s holds %s shards, %s %s shards", u.file, u.kind, v.file, v.kind);
      else if (!u.fingerprint.empty() && !v.fingerprint.empty() && u.fingerprint != v.fingerprint)
        why = absl::StrFormat("tokenizer_fingerprint %s in %s, %s in %s", u.fingerprint, u.file,
                              v.fingerprint, v.file);
      else if ((u.fingerprint.empty() || v.fingerprint.empty()) && u.description != v.description)
        why = absl::StrFormat("tokenizer \"%s\" in %s, \"%s\" in %s", u.description, u.file,
                              v.description, v.file);
      if (!why.empty())
        return absl::InvalidArgumentError(absl::StrFormat(
            "the shards come from different tokenizers, so one id means different tokens in "
            "them (their msa-data metadata: %s); tokenize every input with one tokenizer",
            why));
    }
    seen.push_back(std::move(v));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BatchSource>> make_shard_source(
    const std::string& glob, int64_t vocab_size, int64_t batch, int64_t seq_len,
    double val_fraction, uint64_t seed, const DataLayout& layout, bool validation,
    bool pack_documents) {
  MSA_ASSIGN_OR_RETURN(std::unique_ptr<WindowSampler> sampler,
                       WindowSampler::open(glob, seq_len, vocab_size, val_fraction, seed));
  std::vector<std::string> paths;
  for (const auto& shard : sampler->shards()) paths.push_back(shard->path());
  MSA_RETURN_IF_ERROR(check_shard_metadata(paths, seq_len));
  std::optional<int32_t> eos_id;
  if (pack_documents) {
    MSA_ASSIGN_OR_RETURN(eos_id, shards_eos_id(paths, vocab_size));
  }
  if (validation && sampler->num_val_windows() == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "'%s': no validation windows (set --val_fraction > 0 to hold some out)", glob));
  }
  return std::unique_ptr<BatchSource>(
      new ShardSource(std::move(sampler), batch, layout, validation, eos_id));
}

}  // namespace msa
