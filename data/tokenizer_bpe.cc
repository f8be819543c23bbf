#include "data/tokenizer_bpe.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/tokenizer_unicode.h"

namespace msa::tok {

namespace {

constexpr uint32_t kNoMerge = UINT32_MAX;
// Words up to this many bytes are cached (the library's MAX_LENGTH).
constexpr size_t kMaxCachedBytes = 256;
// Entries per thread and model before the cache starts over.
constexpr size_t kMaxCachedWords = 1 << 16;
// Longer words merge with the priority queue; shorter ones with a linear scan.
constexpr size_t kLinearMergeLimit = 48;

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for U+0100 onwards.
const std::array<std::string, 256>& byte_alphabet() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      append_utf8(t[b], printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++));
    }
    return t;
  }();
  return table;
}

// The inverse: the byte a character stands for, or -1.
int alphabet_byte(char32_t cp) {
  static const absl::flat_hash_map<char32_t, int> inverse = [] {
    absl::flat_hash_map<char32_t, int> m;
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      m[next_code_point(byte_alphabet()[b], i)] = b;
    }
    return m;
  }();
  const auto it = inverse.find(cp);
  return it == inverse.end() ? -1 : it->second;
}

std::atomic<uint64_t> next_cache_key{1};

struct WordCache {
  uint64_t key = 0;
  absl::flat_hash_map<std::string, std::vector<uint32_t>> words;
};

// This thread's cache for the model with `key`. A thread keeps the caches of the last few models
// it used; models are rarely many, and a cache of a destroyed model is only memory until evicted.
WordCache& thread_cache(uint64_t key) {
  thread_local std::vector<std::unique_ptr<WordCache>> caches;
  thread_local WordCache* last = nullptr;
  if (last != nullptr && last->key == key) return *last;
  for (auto& c : caches) {
    if (c->key == key) {
      last = c.get();
      return *last;
    }
  }
  if (caches.size() >= 8) caches.erase(caches.begin());
  caches.push_back(std::make_unique<WordCache>());
  caches.back()->key = key;
  last = caches.back().get();
  return *last;
}

}  // namespace

const std::string& byte_level_char(uint8_t b) { return byte_alphabet()[b]; }

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::create(
    std::vector<std::pair<std::string, uint32_t>> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, BpeConfig config) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->config_ = std::move(config);
  m->cache_key_ = next_cache_key.fetch_add(1);
  m->vocab_.reserve(vocab.size());
  for (auto& [token, id] : vocab) {
    m->max_id_ = std::max<int64_t>(m->max_id_, id);
    m->vocab_.insert_or_assign(std::move(token), id);
  }
  m->merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto ia = m->vocab_.find(a), ib = m->vocab_.find(b);
    if (ia == m->vocab_.end() || ib == m->vocab_.end())
      return absl::InvalidArgumentError(
          absl::StrFormat("model.merges[%d]: token \"%s\" is not in model.vocab", rank,
                          ia == m->vocab_.end() ? a : b));
    joined.assign(a);
    joined += b;
    const auto in = m->vocab_.find(joined);
    if (in == m->vocab_.end())
      return absl::InvalidArgumentError(absl::StrFormat(
          "model.merges[%d]: merged token \"%s\" is not in model.vocab", rank, joined));
    // A pair listed twice keeps its last rank, as the library's map does.
    m->merges_.insert_or_assign((uint64_t{ia->second} << 32) | ib->second,
                                (uint64_t{rank} << 32) | in->second);
  }
  if (m->config_.unk_token) {
    const auto it = m->vocab_.find(*m->config_.unk_token);
    if (it == m->vocab_.end())
      return absl::InvalidArgumentError(
          absl::StrFormat("model.unk_token: \"%s\" is not in model.vocab", *m->config_.unk_token));
    m->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const auto it = m->vocab_.find(name);
    m->fallback_ids_[b] = it == m->vocab_.end() ? -1 : static_cast<int32_t>(it->second);
    const auto ib = m->vocab_.find(byte_level_char(static_cast<uint8_t>(b)));
    m->byte_ids_[b] = ib == m->vocab_.end() ? -1 : static_cast<int32_t>(ib->second);
  }
  if (m->config_.byte_level) {
    // Tokens as the raw bytes they stand for; those with characters outside the byte alphabet can
    // never equal a byte-level pre-token and are left out.
    m->raw_vocab_.reserve(m->vocab_.size());
    std::string raw;
    for (const auto& [token, id] : m->vocab_) {
      raw.clear();
      bool ok = true;
      for (size_t i = 0; i < token.size() && ok;) {
        const int b = alphabet_byte(next_code_point(token, i));
        if (b < 0) ok = false;
        raw.push_back(static_cast<char>(b));
      }
      if (ok) m->raw_vocab_.emplace(raw, id);
    }
  }
  return m;
}

std::optional<uint32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(as_absl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::initial_symbols(std::string_view word, std::vector<uint32_t>& symbols) const {
  // BPE::merge_word: a pending unknown is emitted before the next known character (or at the
  // end), fused with following unknowns when fuse_unk; byte-fallback tokens do not flush it.
  bool unk_pending = false;
  auto unknown = [&](std::string_view chars) {
    if (config_.byte_fallback) {
      bool all = true;
      for (char c : chars) all = all && fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : chars) symbols.push_back(fallback_ids_[static_cast<uint8_t>(c)]);
        return;
      }
    }
    if (!unk_id_) return;  // no unk token: the character is dropped
    if (unk_pending && !config_.fuse_unk) symbols.push_back(*unk_id_);
    unk_pending = true;
  };
  auto known = [&](uint32_t id) {
    if (unk_pending) {
      symbols.push_back(*unk_id_);
      unk_pending = false;
    }
    symbols.push_back(id);
  };
  if (config_.byte_level) {
    for (char c : word) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        known(static_cast<uint32_t>(id));
      } else {
        unknown(byte_level_char(static_cast<uint8_t>(c)));
      }
    }
  } else {
    for (size_t i = 0; i < word.size();) {
      const size_t len = utf8_length(static_cast<unsigned char>(word[i]));
      const std::string_view ch = word.substr(i, len);
      i += len;
      const auto it = vocab_.find(as_absl(ch));
      if (it != vocab_.end()) {
        known(it->second);
      } else {
        unknown(ch);
      }
    }
  }
  if (unk_pending) symbols.push_back(*unk_id_);
}

void bpe_merge_linear(const BpeModel& model, std::vector<uint32_t>& s) {
  if (s.size() < 2) return;
  thread_local std::vector<uint64_t> pair;  // rank << 32 | new id, per adjacent pair
  auto lookup = [&](uint32_t a, uint32_t b) -> uint64_t {
    const auto it = model.merges_.find((uint64_t{a} << 32) | b);
    return it == model.merges_.end() ? ~uint64_t{0} : it->second;
  };
  pair.resize(s.size() - 1);
  for (size_t i = 0; i + 1 < s.size(); ++i) pair[i] = lookup(s[i], s[i + 1]);
  while (true) {
    // Lowest rank, leftmost on ties: the order in which the library's queue pops merges.
    size_t at = 0;
    uint64_t best = ~uint64_t{0};
    for (size_t i = 0; i < pair.size(); ++i) {
      if ((pair[i] >> 32) < (best >> 32)) {
        best = pair[i];
        at = i;
      }
    }
    if ((best >> 32) == kNoMerge) break;
    s[at] = static_cast<uint32_t>(best);
    s.erase(s.begin() + static_cast<ptrdiff_t>(at) + 1);
    pair.erase(pair.begin() + static_cast<ptrdiff_t>(at));
    if (at < pair.size()) pair[at] = lookup(s[at], s[at + 1]);
    if (at > 0) pair[at - 1] = lookup(s[at - 1], s[at]);
  }
}

void bpe_merge_heap(const BpeModel& model, std::vector<uint32_t>& s) {
  // Word::merge_all: a min-queue of (rank, position) over a linked list of symbols; entries made
  // stale by earlier merges are recognised and skipped when popped.
  if (s.size() < 2) return;
  struct Symbol {
    uint32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Merge {
    uint32_t rank, pos, new_id;
    bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Merge> queue;
  const int32_t n = static_cast<int32_t>(s.size());
  sym.resize(s.size());
  for (int32_t i = 0; i < n; ++i) sym[i] = {s[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  auto find = [&](uint32_t a, uint32_t b) { return model.merges_.find((uint64_t{a} << 32) | b); };
  queue.clear();
  const auto cmp = std::greater<Merge>();
  for (int32_t i = 0; i + 1 < n; ++i) {
    const auto it = find(s[i], s[i + 1]);
    if (it != model.merges_.end())
      queue.push_back({static_cast<uint32_t>(it->second >> 32), static_cast<uint32_t>(i),
                       static_cast<uint32_t>(it->second)});
  }
  std::make_heap(queue.begin(), queue.end(), cmp);
  auto push = [&](uint32_t pos, uint64_t v) {
    queue.push_back({static_cast<uint32_t>(v >> 32), pos, static_cast<uint32_t>(v)});
    std::push_heap(queue.begin(), queue.end(), cmp);
  };
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), cmp);
    const Merge top = queue.back();
    queue.pop_back();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = sym[right_pos];
    const auto it = find(left.id, right.id);
    if (it == model.merges_.end() || static_cast<uint32_t>(it->second) != top.new_id) continue;
    left.id = top.new_id;
    left.next = right.next;
    sym[right_pos].alive = false;
    if (right.next >= 0) sym[right.next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) {
      const auto p = find(sym[left.prev].id, left.id);
      if (p != model.merges_.end()) push(static_cast<uint32_t>(left.prev), p->second);
    }
    if (left.next >= 0) {
      const auto q = find(left.id, sym[left.next].id);
      if (q != model.merges_.end()) push(top.pos, q->second);
    }
  }
  size_t w = 0;
  for (int32_t i = 0; i < n; ++i)
    if (sym[i].alive) s[w++] = sym[i].id;
  s.resize(w);
}

void BpeModel::encode_uncached(std::string_view word, std::vector<uint32_t>& out) const {
  thread_local std::vector<uint32_t> symbols;
  symbols.clear();
  initial_symbols(word, symbols);
  if (symbols.size() <= kLinearMergeLimit) {
    bpe_merge_linear(*this, symbols);
  } else {
    bpe_merge_heap(*this, symbols);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
}

void BpeModel::encode(std::string_view word, std::vector<uint32_t>& out) const {
  if (word.empty()) return;
  if (config_.byte_level && word.size() == 1) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(word[0])];
    if (id >= 0) {
      out.push_back(static_cast<uint32_t>(id));
      return;
    }
  }
  if (config_.ignore_merges) {
    const auto& v = config_.byte_level ? raw_vocab_ : vocab_;
    const auto it = v.find(as_absl(word));
    if (it != v.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() >= kMaxCachedBytes) {
    encode_uncached(word, out);
    return;
  }
  WordCache& cache = thread_cache(cache_key_);
  const auto hit = cache.words.find(as_absl(word));
  if (hit != cache.words.end()) {
    out.insert(out.end(), hit->second.begin(), hit->second.end());
    return;
  }
  const size_t first = out.size();
  encode_uncached(word, out);
  if (cache.words.size() >= kMaxCachedWords) cache.words.clear();
  cache.words.emplace(
      std::string(word),
      std::vector<uint32_t>(out.begin() + static_cast<ptrdiff_t>(first), out.end()));
}

}  // namespace msa::tok
