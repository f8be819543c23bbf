#include "data/shard.h"

#include <dirent.h>
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "core/check.h"
#include "data/json_file.h"

namespace msa {
namespace {

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

absl::Status io_error(const std::string& path, const char* what) {
  return absl::InternalError(absl::StrFormat("%s: %s: %s", path, what, std::strerror(errno)));
}

}  // namespace

TokenWidth token_width_for_vocab(int64_t vocab_size) {
  return vocab_size <= 65536 ? TokenWidth::kU16 : TokenWidth::kU32;
}

absl::Status write_shard(const std::string& path, absl::Span<const uint32_t> tokens,
                         TokenWidth width) {
  const int w = static_cast<int>(width);
  std::vector<uint8_t> bytes(kShardHeaderBytes + tokens.size() * w, 0);
  std::memcpy(bytes.data(), kShardMagic, 8);
  put_u32(bytes.data() + 8, kShardVersion);
  put_u32(bytes.data() + 12, static_cast<uint32_t>(w));
  put_u64(bytes.data() + 16, tokens.size());
  uint8_t* p = bytes.data() + kShardHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (width == TokenWidth::kU16 && tokens[i] > 0xFFFF) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: token %d at position %d does not fit a uint16 shard", path, tokens[i], i));
    }
    for (int b = 0; b < w; ++b) p[i * w + b] = static_cast<uint8_t>(tokens[i] >> (8 * b));
  }
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return io_error(tmp, "cannot create");
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) return io_error(tmp, "write failed");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return io_error(path, "rename failed");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShardReader>> ShardReader::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return io_error(path, "cannot open token shard");
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return io_error(path, "cannot stat");
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: is a directory, not a token shard (give its shards, e.g. '%s/*.tok')", path, path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a regular file, so not a token shard", path));
  }
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrFormat("%s: not a token shard: %d bytes is shorter than the %d-byte header", path,
                        file_bytes, kShardHeaderBytes));
  }
  void* map = mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED && map_errno == ENOMEM)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: mmap failed: %s. Every shard stays mapped for the run (once per process), and the "
        "kernel caps a process's mappings at vm.max_map_count (sysctl; 65530 by default): "
        "fewer, larger shards (msa-data --shard_tokens) or a higher cap",
        path, std::strerror(map_errno)));
  if (map == MAP_FAILED) return io_error(path, "mmap failed");
  std::unique_ptr<ShardReader> r(new ShardReader());
  r->path_ = path;
  r->map_ = static_cast<const uint8_t*>(map);
  r->map_bytes_ = file_bytes;
  const uint8_t* h = r->map_;
  if (std::memcmp(h, kShardMagic, 8) != 0) {
    return absl::DataLossError(
        absl::StrFormat("%s: not a token shard: wrong magic (expected \"MSATOKEN\")", path));
  }
  const uint32_t version = get_u32(h + 8);
  if (version != kShardVersion) {
    return absl::DataLossError(absl::StrFormat("%s: unsupported shard version %d (expected %d)",
                                               path, version, kShardVersion));
  }
  const uint32_t w = get_u32(h + 12);
  if (w != 2 && w != 4) {
    return absl::DataLossError(
        absl::StrFormat("%s: unsupported token width %d bytes (expected 2 for "
                        "uint16 or 4 for uint32)",
                        path, w));
  }
  r->width_ = static_cast<TokenWidth>(w);
  const uint64_t count = get_u64(h + 16);
  const uint64_t payload = file_bytes - kShardHeaderBytes;
  if (count > payload / w) {
    return absl::DataLossError(
        absl::StrFormat("%s: header says %d tokens (%.0f bytes) but the file "
                        "holds only %d bytes of tokens "
                        "(truncated?)",
                        path, count, static_cast<double>(count) * w, payload));
  }
  // A shard is exactly its header and its tokens (write_shard writes nothing else): bytes past
  // the count, or a reserved field that is not 0, mean a file damaged or written by something
  // else, whose tokens would be read short without a word.
  if (payload != count * w) {
    return absl::DataLossError(absl::StrFormat(
        "%s: header says %d tokens (%d bytes) but the file holds %d bytes of tokens (%d bytes "
        "too many: a damaged header or an appended file)",
        path, count, count * w, payload, payload - count * w));
  }
  if (const uint64_t reserved = get_u64(h + 24); reserved != 0) {
    return absl::DataLossError(absl::StrFormat(
        "%s: header field 'reserved' (bytes 24-31) is %d, not 0: not a shard this version wrote",
        path, reserved));
  }
  r->count_ = static_cast<int64_t>(count);
  return r;
}

ShardReader::~ShardReader() {
  if (map_ != nullptr) munmap(const_cast<uint8_t*>(map_), map_bytes_);
}

uint32_t ShardReader::token(int64_t i) const {
  MSA_CHECK(i >= 0 && i < count_, "%s: token %d out of range [0, %d)", path_, i, count_);
  const uint8_t* p = map_ + kShardHeaderBytes + i * static_cast<int64_t>(width_);
  return width_ == TokenWidth::kU16 ? static_cast<uint32_t>(p[0] | (p[1] << 8)) : get_u32(p);
}

void ShardReader::read(int64_t begin, int64_t n, int32_t* out) const {
  MSA_CHECK(begin >= 0 && n >= 0 && begin + n <= count_, "%s: read [%d, %d) outside [0, %d)", path_,
            begin, begin + n, count_);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(token(begin + i));
}

absl::Status ShardReader::check_vocab(int64_t vocab_size) const {
  for (int64_t i = 0; i < count_; ++i) {
    const uint32_t t = token(i);
    if (static_cast<int64_t>(t) >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: token id %d at position %d is >= the model's vocab_size %d", path_,
                          t, i, vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> glob_files(const std::string& pattern) {
  glob_t g;
  std::memset(&g, 0, sizeof(g));
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  if (files.empty()) {
    return absl::NotFoundError(absl::StrFormat("no files match '%s'", pattern));
  }
  std::sort(files.begin(), files.end());
  return files;
}

absl::Status check_metadata_slot(const std::string& dir, const std::string& prefix,
                                 bool overwrite) {
  const std::string path = dir + "/" + prefix + ".json";
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISREG(st.st_mode))
    return absl::FailedPreconditionError(absl::StrFormat(
        "invalid --output: '%s' is a directory (or another non-file) where the metadata file "
        "goes; remove it, or give another --prefix / --output",
        path));
  if (overwrite) return absl::OkStatus();
  const absl::StatusOr<nlohmann::json> read = read_json_file(path);
  // A written_by that is not a string is not ours either (json::value() throws there).
  bool ours = false;
  if (read.ok() && read->is_object()) {
    const auto written_by = read->find("written_by");
    ours = written_by != read->end() && written_by->is_string() &&
           absl::StartsWith(written_by->get<std::string>(), "msa-data");
  }
  if (!ours)
    return absl::FailedPreconditionError(absl::StrFormat(
        "invalid --output: '%s' exists and is not msa-data's metadata; give --overwrite to "
        "replace it, or another --prefix / --output",
        path));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> check_shard_dir(const std::string& dir, bool overwrite) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --output: cannot create directory '%s': %s", dir, std::strerror(errno)));
    return std::vector<std::string>{};
  }
  if (!S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --output: '%s' exists and is not a directory", dir));
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --output: cannot list '%s': %s", dir, std::strerror(errno)));
  std::vector<std::string> shards, staging;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    auto ends_with = [&](const std::string& suffix) {
      return name.size() > suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    struct stat entry;
    if (::lstat((dir + "/" + name).c_str(), &entry) != 0) continue;
    // Only regular files are shards: a directory named x.tok is not ours to delete.
    if (S_ISREG(entry.st_mode) && (ends_with(".tok") || ends_with(".tok.tmp")))
      shards.push_back(dir + "/" + name);
    // The staging directory of an msa-data run that was killed before it committed.
    if (S_ISDIR(entry.st_mode) && name.rfind(".msa-data-", 0) == 0)
      staging.push_back(dir + "/" + name);
  }
  ::closedir(d);
  std::sort(shards.begin(), shards.end());
  std::sort(staging.begin(), staging.end());
  for (const std::string& s : staging) {
    if (!overwrite) {
      std::fprintf(stderr,
                   "msa-data: warning: '%s' holds the partial shards of an interrupted run; "
                   "--overwrite removes it (or delete it by hand)\n",
                   s.c_str());
      continue;
    }
    remove_flat_dir(s);
  }
  if (!shards.empty() && !overwrite)
    return absl::FailedPreconditionError(absl::StrFormat(
        "invalid --output: '%s' already holds %d token shard(s) (e.g. '%s'), which a glob would "
        "mix with the new ones; give --overwrite to replace them, or another --output",
        dir, shards.size(), shards.front()));
  // msa-data text's metadata file <prefix>.json describes the shards <prefix>-NNNNN.tok: it goes
  // with them.
  std::vector<std::string> files = shards;
  for (const std::string& s : shards) {
    const std::optional<std::string> path = shard_metadata_path(s);
    if (!path) continue;
    const std::string& metadata = *path;
    if (::access(metadata.c_str(), F_OK) == 0 &&
        std::find(files.begin(), files.end(), metadata) == files.end())
      files.push_back(metadata);
  }
  return files;
}

std::optional<std::string> shard_metadata_path(const std::string& shard) {
  const size_t dash = shard.rfind('-');
  // <prefix>-<5 or more digits>.tok: msa-data widens the names past 100000 shards.
  if (dash == std::string::npos || shard.size() < dash + 10 ||
      shard.compare(shard.size() - 4, 4, ".tok") != 0 ||
      !std::all_of(shard.begin() + dash + 1, shard.end() - 4,
                   [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return shard.substr(0, dash) + ".json";
}

std::vector<std::string> shard_metadata_files(const std::vector<std::string>& shards) {
  std::set<std::string> files;
  for (const std::string& shard : shards)
    if (const std::optional<std::string> m = shard_metadata_path(shard)) files.insert(*m);
  return {files.begin(), files.end()};
}

void remove_flat_dir(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") std::remove((dir + "/" + name).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

absl::StatusOr<std::unique_ptr<ShardStagingDir>> ShardStagingDir::create(
    const std::string& parent) {
  std::string templ = parent + "/.msa-data-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr)
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --output: cannot create a staging directory in '%s': %s", parent,
                        std::strerror(errno)));
  return std::unique_ptr<ShardStagingDir>(new ShardStagingDir(templ));
}

ShardStagingDir::~ShardStagingDir() {
  if (!path_.empty()) remove_flat_dir(path_);
}

absl::Status ShardStagingDir::commit(const std::string& dir, const std::vector<std::string>& stale,
                                     const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    const std::string from = path_ + "/" + name, to = dir + "/" + name;
    if (std::rename(from.c_str(), to.c_str()) != 0)
      return io_error(to, "cannot move the new shard into place");
  }
  for (const std::string& f : stale) {
    const bool replaced = std::any_of(names.begin(), names.end(),
                                      [&](const std::string& n) { return f == dir + "/" + n; });
    if (!replaced && std::remove(f.c_str()) != 0 && errno != ENOENT)
      return io_error(f, "cannot delete old shard");
  }
  if (::rmdir(path_.c_str()) != 0) return io_error(path_, "cannot remove staging directory");
  path_.clear();
  return absl::OkStatus();
}

}  // namespace msa
