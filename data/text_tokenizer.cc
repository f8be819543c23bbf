#include "data/text_tokenizer.h"

#include <sys/stat.h>

#include <cstdio>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/shard.h"

namespace msa {

absl::StatusOr<TextShardingResult> write_text_shards(
    const TextShardingOptions& o, const std::function<void(int64_t, int64_t)>& progress) {
  if (o.inputs.empty()) return absl::InvalidArgumentError("invalid --input: no input files");
  if (o.shard_tokens < 2)
    return absl::InvalidArgumentError("invalid --shard_tokens: must be at least 2");
  int64_t total = 0;
  for (const std::string& f : o.inputs) {
    struct stat st;
    if (::stat(f.c_str(), &st) != 0)
      return absl::NotFoundError(absl::StrFormat("invalid --input: cannot read '%s'", f));
    if (S_ISDIR(st.st_mode))
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid --input: '%s' is a directory (give its text files, one document each)", f));
    total += st.st_size;
  }
  MSA_RETURN_IF_ERROR(prepare_shard_dir(o.output_dir, o.overwrite));

  TextShardingResult result;
  std::vector<uint32_t> shard;
  shard.reserve(static_cast<size_t>(std::min<int64_t>(o.shard_tokens, 1 << 26)));
  auto flush = [&]() -> absl::Status {
    if (shard.empty()) return absl::OkStatus();
    const std::string path =
        absl::StrFormat("%s/%s-%05d.tok", o.output_dir, o.prefix, result.shards.size());
    MSA_RETURN_IF_ERROR(write_shard(path, shard, TokenWidth::kU16));
    result.shards.push_back(path);
    shard.clear();
    return absl::OkStatus();
  };
  auto push = [&](uint32_t token) -> absl::Status {
    shard.push_back(token);
    ++result.tokens;
    if (static_cast<int64_t>(shard.size()) == o.shard_tokens) return flush();
    return absl::OkStatus();
  };
  int64_t done = 0;
  std::vector<unsigned char> buf(1 << 20);
  for (const std::string& f : o.inputs) {
    FILE* in = std::fopen(f.c_str(), "rb");
    if (in == nullptr)
      return absl::NotFoundError(absl::StrFormat("invalid --input: cannot open '%s'", f));
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), in)) > 0) {
      for (size_t i = 0; i < n; ++i) {
        absl::Status s = push(buf[i]);
        if (!s.ok()) {
          std::fclose(in);
          return s;
        }
      }
      done += static_cast<int64_t>(n);
      if (progress) progress(done, total);
    }
    std::fclose(in);
    MSA_RETURN_IF_ERROR(push(kByteEos));
    ++result.documents;
  }
  MSA_RETURN_IF_ERROR(flush());
  return result;
}

}  // namespace msa
