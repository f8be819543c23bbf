// tokenizer.json loading and the encode pipeline, in the `tokenizers` library's order:
//   1. added tokens with normalized=false are cut out of the raw text;
//   2. each remaining piece is normalized, then added tokens with normalized=true are cut out;
//   3. the pre-tokenizer splits the remaining pieces;
//   4. the BPE model encodes each pre-token.
#include "data/hf_tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/fnv1a.h"
#include "core/status.h"
#include "data/json_file.h"
#include "data/tokenizer_added.h"
#include "data/tokenizer_bpe.h"
#include "data/tokenizer_normalize.h"
#include "data/tokenizer_pretokenize.h"
#include "data/tokenizer_unicode.h"
#include "nlohmann/json.hpp"

namespace msa {

namespace {

using nlohmann::json;
using tok::AddedToken;
using tok::AddedTokenMatcher;
using tok::BpeModel;
using tok::Piece;
using tok::PieceStore;

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// A post-processor's document delimiters: the special tokens a template puts before and after the
// sequence ("$A").
struct Template {
  std::optional<std::string> bos, eos;  // token contents
  std::optional<uint32_t> bos_id, eos_id;
};

absl::Status parse_post_processor(const json& j, const std::string& where, Template* t) {
  if (j.is_null()) return absl::OkStatus();
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return absl::InvalidArgumentError(where + ".type: missing");
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    const auto it = j.find("processors");
    if (it == j.end() || !it->is_array())
      return absl::InvalidArgumentError(where + ".processors: missing or not a list");
    for (size_t k = 0; k < it->size(); ++k)
      MSA_RETURN_IF_ERROR(
          parse_post_processor((*it)[k], absl::StrFormat("%s.processors[%d]", where, k), t));
    return absl::OkStatus();
  }
  if (type == "TemplateProcessing") {
    const auto single = j.find("single");
    if (single == j.end() || !single->is_array())
      return absl::InvalidArgumentError(where + ".single: missing or not a list");
    const json specials = j.value("special_tokens", json::object());
    bool seen_sequence = false;
    for (const json& piece : *single) {
      if (piece.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      if (!piece.contains("SpecialToken")) continue;
      const std::string name = piece["SpecialToken"].value("id", "");
      std::optional<uint32_t> id;
      if (specials.contains(name) && specials[name].contains("ids") &&
          specials[name]["ids"].is_array() && specials[name]["ids"].size() == 1 &&
          specials[name]["ids"][0].is_number_unsigned())
        id = specials[name]["ids"][0].get<uint32_t>();
      std::string content = name;
      if (specials.contains(name) && specials[name].contains("tokens") &&
          specials[name]["tokens"].is_array() && specials[name]["tokens"].size() == 1)
        content = specials[name]["tokens"][0].get<std::string>();
      if (!seen_sequence && !t->bos) {
        t->bos = content;
        t->bos_id = id;
      } else if (seen_sequence) {
        t->eos = content;
        t->eos_id = id;
      }
    }
    return absl::OkStatus();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    // cls and sep are [token, id] pairs: <s> $A </s>.
    const auto cls = j.find("cls"), sep = j.find("sep");
    if (cls != j.end() && cls->is_array() && cls->size() == 2) {
      t->bos = (*cls)[0].get<std::string>();
      t->bos_id = (*cls)[1].get<uint32_t>();
    }
    if (sep != j.end() && sep->is_array() && sep->size() == 2) {
      t->eos = (*sep)[0].get<std::string>();
      t->eos_id = (*sep)[1].get<uint32_t>();
    }
    return absl::OkStatus();
  }
  return absl::OkStatus();  // ByteLevel and others add nothing
}

// bos_token / eos_token in tokenizer_config.json: a string, {"content": ...}, or null.
std::optional<std::string> config_token(const json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

class HfTokenizerImpl final : public HfTokenizer {
 public:
  absl::StatusOr<std::vector<uint32_t>> encode(std::string_view text) const override {
    return encode_with_options(text, false, nullptr);
  }
  absl::StatusOr<std::vector<uint32_t>> encode_with_options(std::string_view text,
                                                            bool split_special_tokens,
                                                            bool* matched_special) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<uint32_t> bos_id() const override { return bos_id_; }
  std::optional<uint32_t> eos_id() const override { return eos_id_; }
  bool adds_bos() const override { return adds_bos_; }
  bool adds_eos() const override { return adds_eos_; }
  std::string describe() const override { return description_; }
  std::string fingerprint() const override { return fingerprint_; }

  absl::Status load(const std::string& json_path, const std::string& config_path);

 private:
  std::optional<uint32_t> token_id(std::string_view content) const {
    const auto it = added_ids_.find(tok::as_absl(content));
    if (it != added_ids_.end()) return it->second;
    return model_->token_to_id(content);
  }
  absl::Status load_added_tokens(const json& list);

  std::unique_ptr<tok::Normalizer> normalizer_;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<AddedTokenMatcher> raw_tokens_, normalized_tokens_;
  absl::flat_hash_map<std::string, uint32_t> added_ids_;
  int64_t vocab_size_ = 0;
  std::optional<uint32_t> bos_id_, eos_id_;
  bool adds_bos_ = false, adds_eos_ = false;
  std::string description_;
  std::string fingerprint_;
};

absl::StatusOr<std::unique_ptr<BpeModel>> parse_model(const json& j, bool byte_level) {
  if (!j.is_object()) return absl::InvalidArgumentError("model: missing or not an object");
  const std::string type = j.value("type", "BPE");
  if (type != "BPE")
    return absl::InvalidArgumentError(
        absl::StrFormat("model.type: \"%s\" is not supported (supported: BPE)", type));
  if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].get<double>() != 0.0)
    return absl::InvalidArgumentError(
        "model.dropout: BPE dropout samples merges at random; only null or 0 is supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (j.contains(key) && !j[key].is_null() && !j[key].get<std::string>().empty())
      return absl::InvalidArgumentError(absl::StrFormat("model.%s: not supported", key));
  }
  tok::BpeConfig config;
  if (j.contains("unk_token") && j["unk_token"].is_string())
    config.unk_token = j["unk_token"].get<std::string>();
  MSA_ASSIGN_OR_RETURN(config.fuse_unk, optional_bool(j, "fuse_unk", false, "model"));
  MSA_ASSIGN_OR_RETURN(config.byte_fallback, optional_bool(j, "byte_fallback", false, "model"));
  MSA_ASSIGN_OR_RETURN(config.ignore_merges, optional_bool(j, "ignore_merges", false, "model"));
  config.byte_level = byte_level;

  const auto vocab_it = j.find("vocab");
  if (vocab_it == j.end() || !vocab_it->is_object())
    return absl::InvalidArgumentError("model.vocab: missing or not an object");
  std::vector<std::pair<std::string, uint32_t>> vocab;
  vocab.reserve(vocab_it->size());
  for (const auto& [token, id] : vocab_it->items()) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() > UINT32_MAX)
      return absl::InvalidArgumentError(
          absl::StrFormat("model.vocab[\"%s\"]: expected an id (a non-negative integer)", token));
    vocab.emplace_back(token, id.get<uint32_t>());
  }
  const auto merges_it = j.find("merges");
  if (merges_it == j.end() || !merges_it->is_array())
    return absl::InvalidArgumentError("model.merges: missing or not a list");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_it->size());
  for (size_t k = 0; k < merges_it->size(); ++k) {
    const json& m = (*merges_it)[k];
    if (m.is_string()) {  // "a b"; "#version" lines of merges.txt are skipped
      const std::string s = m.get<std::string>();
      if (s.starts_with("#version")) continue;
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        return absl::InvalidArgumentError(absl::StrFormat(
            "model.merges[%d]: \"%s\" is not two tokens separated by one space", k, s));
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError(
          absl::StrFormat("model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", k));
    }
  }
  return BpeModel::create(std::move(vocab), merges, std::move(config));
}

absl::Status HfTokenizerImpl::load_added_tokens(const json& list) {
  if (!list.is_null() && !list.is_array())
    return absl::InvalidArgumentError("added_tokens: not a list");
  // AddedVocabulary::add_tokens as the library's deserializer calls it: a token keeps the id its
  // content already has (added before, or in the model's vocabulary); new ones are numbered from
  // the model's vocabulary size on. The "id" fields are not consulted, as in the library.
  const auto entries = static_cast<uint32_t>(model_->vocab_entries());
  uint32_t next_id = entries;
  absl::flat_hash_map<uint32_t, AddedToken> by_id;
  std::vector<uint32_t> order;
  for (size_t k = 0; list.is_array() && k < list.size(); ++k) {
    const json& e = list[k];
    const std::string where = absl::StrFormat("added_tokens[%d]", k);
    if (!e.is_object() || !e.contains("content") || !e["content"].is_string())
      return absl::InvalidArgumentError(where + ".content: missing");
    AddedToken t;
    t.content = e["content"].get<std::string>();
    MSA_ASSIGN_OR_RETURN(t.single_word, optional_bool(e, "single_word", false, where));
    MSA_ASSIGN_OR_RETURN(t.lstrip, optional_bool(e, "lstrip", false, where));
    MSA_ASSIGN_OR_RETURN(t.rstrip, optional_bool(e, "rstrip", false, where));
    MSA_ASSIGN_OR_RETURN(t.special, optional_bool(e, "special", false, where));
    MSA_ASSIGN_OR_RETURN(t.normalized, optional_bool(e, "normalized", !t.special, where));
    if (t.content.empty()) continue;
    if (tok::find_invalid_utf8(t.content) != std::string_view::npos)
      return absl::InvalidArgumentError(where + ".content: invalid UTF-8");
    uint32_t id;
    if (const auto it = added_ids_.find(t.content); it != added_ids_.end()) {
      const AddedToken& old = by_id[it->second];
      if (old.single_word == t.single_word && old.lstrip == t.lstrip && old.rstrip == t.rstrip &&
          old.normalized == t.normalized && old.special == t.special)
        continue;
      id = it->second;
    } else if (const auto mid = model_->token_to_id(t.content)) {
      id = *mid;
    } else {
      id = next_id++;
    }
    t.id = id;
    added_ids_[t.content] = id;
    if (!by_id.contains(id)) order.push_back(id);
    by_id[id] = t;
  }
  std::vector<AddedToken> raw, normalized;
  std::vector<std::string> raw_patterns, normalized_patterns;
  // The special tokens before the others (each in file order), and the first of two with the
  // same text wins the match: the tokenizers library's rule through 0.22 (0.23 registers them in
  // hash order, so its choice between such twins is arbitrary; 0.23.2 agreed on the test's).
  std::stable_partition(order.begin(), order.end(), [&](uint32_t id) { return by_id[id].special; });
  for (uint32_t id : order) {
    const AddedToken& t = by_id[id];
    if (t.normalized) {
      std::string pattern = t.content;
      if (normalizer_) {
        auto n = normalizer_->normalize(t.content);
        if (!n.ok()) return n.status();
        pattern = *std::move(n);
      }
      normalized.push_back(t);
      normalized_patterns.push_back(std::move(pattern));
    } else {
      raw.push_back(t);
      raw_patterns.push_back(t.content);
    }
  }
  raw_tokens_ = std::make_unique<AddedTokenMatcher>(std::move(raw), raw_patterns);
  normalized_tokens_ =
      std::make_unique<AddedTokenMatcher>(std::move(normalized), normalized_patterns);
  return absl::OkStatus();
}

absl::Status HfTokenizerImpl::load(const std::string& json_path, const std::string& config_path) {
  MSA_ASSIGN_OR_RETURN(const json j, read_json_file(json_path));
  auto fail = [&](const absl::Status& s) { return annotate(s, json_path); };
  try {
    if (!j.is_object()) return fail(absl::InvalidArgumentError("not a JSON object"));
    std::string normalizer_name = "none", pre_name = "none";
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      auto n = tok::parse_normalizer(j["normalizer"], "normalizer");
      if (!n.ok()) return fail(n.status());
      normalizer_ = *std::move(n);
      normalizer_name = j["normalizer"]["type"].get<std::string>();
    }
    bool byte_level = false;
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
      auto p = tok::parse_pre_tokenizer(j["pre_tokenizer"], "pre_tokenizer", &byte_level);
      if (!p.ok()) return fail(p.status());
      pre_tokenizer_ = *std::move(p);
      pre_name = j["pre_tokenizer"]["type"].get<std::string>();
    }
    if (!j.contains("model")) return fail(absl::InvalidArgumentError("model: missing"));
    auto model = parse_model(j["model"], byte_level);
    if (!model.ok()) return fail(model.status());
    model_ = *std::move(model);
    MSA_RETURN_IF_ERROR(fail(load_added_tokens(j.value("added_tokens", json()))));

    vocab_size_ = model_->max_id() + 1;
    for (const auto& [content, id] : added_ids_)
      vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{id} + 1);
    // What text each id stands for: the vocabulary's (id, token) pairs and the added tokens'
    // (id, content), in id order. Not how text is split into them (normalizer, merges, flags),
    // nor whether BOS is added: a re-saved copy of one tokenizer (merges as pairs, defaults
    // spelled out) has the same fingerprint.
    {
      std::vector<std::pair<int64_t, std::string>> entries;
      for (const auto& [token, id] : j["model"]["vocab"].items())
        if (id.is_number_integer()) entries.emplace_back(id.get<int64_t>(), token);
      for (const auto& [content, id] : added_ids_) entries.emplace_back(id, content);
      std::sort(entries.begin(), entries.end());
      entries.erase(std::unique(entries.begin(), entries.end()), entries.end());
      uint64_t h = kFnv1aBasis;
      for (const auto& [id, token] : entries)
        h = fnv1a64_update(h, absl::StrCat(id, " ", token, absl::string_view("\0", 1)));
      fingerprint_ = absl::StrFormat("%016x", h);
    }

    Template t;
    if (j.contains("post_processor"))
      MSA_RETURN_IF_ERROR(fail(parse_post_processor(j["post_processor"], "post_processor", &t)));
    auto resolve = [&](const std::optional<std::string>& content,
                       std::optional<uint32_t> id) -> std::optional<uint32_t> {
      if (content) {
        if (auto found = token_id(*content)) return found;
      }
      return id;
    };
    bos_id_ = resolve(t.bos, t.bos_id);
    eos_id_ = resolve(t.eos, t.eos_id);
    adds_bos_ = bos_id_.has_value() && t.bos.has_value();
    adds_eos_ = eos_id_.has_value() && t.eos.has_value();

    if (file_exists(config_path)) {
      MSA_ASSIGN_OR_RETURN(const json config, read_json_file(config_path));
      if (!config.is_object())
        return absl::InvalidArgumentError(absl::StrFormat("%s: not a JSON object", config_path));
      for (const char* key : {"bos_token", "eos_token"}) {
        const auto content = config_token(config, key);
        if (!content) continue;
        const auto id = token_id(*content);
        if (!id)
          return absl::InvalidArgumentError(absl::StrFormat("%s: %s \"%s\" is not a token of %s",
                                                            config_path, key, *content, json_path));
        // The template's token is the one actually added; the config names it otherwise.
        if (std::string_view(key) == "bos_token" && !adds_bos_) bos_id_ = id;
        if (std::string_view(key) == "eos_token" && !adds_eos_) eos_id_ = id;
      }
      for (const char* key : {"add_bos_token", "add_eos_token"}) {
        const auto it = config.find(key);
        if (it == config.end() || it->is_null()) continue;
        if (!it->is_boolean())
          return absl::InvalidArgumentError(
              absl::StrFormat("%s: %s: expected true or false", config_path, key));
        bool& flag = std::string_view(key) == "add_bos_token" ? adds_bos_ : adds_eos_;
        flag = it->get<bool>();
      }
      if (adds_bos_ && !bos_id_)
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: add_bos_token is true but no bos_token is defined", config_path));
      if (adds_eos_ && !eos_id_)
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: add_eos_token is true but no eos_token is defined", config_path));
    }

    auto id_text = [](std::optional<uint32_t> id) {
      return id ? absl::StrCat(*id) : std::string("none");
    };
    description_ = absl::StrFormat(
        "BPE%s%s, vocab size %d (%d model tokens, %d added tokens), normalizer %s, "
        "pre-tokenizer %s, bos %s%s, "
        "eos %s%s",
        byte_level ? " (byte-level)" : "", model_->config().byte_fallback ? " (byte fallback)" : "",
        vocab_size_, model_->vocab_entries(), added_ids_.size(), normalizer_name, pre_name,
        id_text(bos_id_), adds_bos_ ? " (added)" : "", id_text(eos_id_),
        adds_eos_ ? " (added)" : "");
  } catch (const json::exception& e) {
    return fail(absl::InvalidArgumentError(absl::StrCat("unexpected JSON value: ", e.what())));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> HfTokenizerImpl::encode_with_options(
    std::string_view text, bool split_special_tokens, bool* matched_special) const {
  if (matched_special != nullptr) *matched_special = false;
  if (text.size() >= (uint64_t{1} << 32))
    return absl::InvalidArgumentError(
        absl::StrFormat("text of %d bytes: documents are limited to 4 GiB", text.size()));
  if (const size_t bad = tok::find_invalid_utf8(text); bad != std::string_view::npos)
    return absl::InvalidArgumentError(absl::StrFormat("invalid UTF-8 at byte offset %d", bad));
  PieceStore store;
  std::vector<Piece> raw_split, pieces;
  raw_tokens_->split(Piece{text, 0, -1}, raw_split, split_special_tokens, matched_special);
  pieces.reserve(raw_split.size());
  for (const Piece& p : raw_split) {
    if (p.id >= 0) {
      pieces.push_back(p);
      continue;
    }
    Piece q = p;
    if (normalizer_) {
      size_t dropped = 0;
      MSA_ASSIGN_OR_RETURN(std::string n, normalizer_->normalize(p.text, &dropped));
      q.text = store.keep(std::move(n));
      q.original_begin += dropped;  // (Metaspace's "first": the kept text starts past the start)
    }
    normalized_tokens_->split(q, pieces, split_special_tokens, matched_special);
  }
  if (pre_tokenizer_) MSA_RETURN_IF_ERROR(pre_tokenizer_->apply(pieces, store));
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 3 + 16);
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(static_cast<uint32_t>(p.id));
    } else {
      model_->encode(p.text, ids);
    }
  }
  return ids;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::load(const std::string& path) {
  std::string json_path = path, dir;
  if (is_directory(path)) {
    dir = path;
    json_path = path + "/tokenizer.json";
  } else {
    const size_t slash = path.rfind('/');
    dir = slash == std::string::npos ? "." : path.substr(0, slash);
  }
  if (!file_exists(json_path))
    return absl::NotFoundError(absl::StrFormat("%s: no such file", json_path));
  auto t = std::make_unique<HfTokenizerImpl>();
  MSA_RETURN_IF_ERROR(t->load(json_path, dir + "/tokenizer_config.json"));
  return std::unique_ptr<HfTokenizer>(std::move(t));
}

}  // namespace msa
