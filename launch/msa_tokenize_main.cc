// msa-tokenize: encodes a text file with a Hugging Face tokenizer.json (data/hf_tokenizer.h) and
// writes the ids as little-endian uint32, without BOS/EOS (the library's
// add_special_tokens=False). It is what tests/data/tokenizer_reference_check.py compares with the
// `tokenizers` library, and how to measure the encoder's speed.
//   msa-tokenize --tokenizer=PATH --input=FILE --output=IDS [--threads=N] [--lines]
// Without --lines the whole file is one document. With --lines each line (without its '\n') is a
// document, encoded separately; the ids are written back to back, and --output_lengths (if given)
// receives the number of ids of each line as uint32.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/hf_tokenizer.h"
#include "launch/program_usage.h"

ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json, or a directory holding one.");
ABSL_FLAG(std::string, input, "", "UTF-8 text file to encode.");
ABSL_FLAG(std::string, output, "", "Output file: the ids as little-endian uint32.");
ABSL_FLAG(std::string, output_lengths, "",
          "--lines: optional file receiving the number of ids of each line (uint32).");
ABSL_FLAG(int, threads, 1, "Encoding threads (--lines: lines are shared out among them).");
ABSL_FLAG(bool, lines, false, "Each line is a document, encoded separately.");

namespace {

absl::Status write_u32(const std::string& path, const std::vector<uint32_t>& values) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrFormat("cannot write '%s'", path));
  // Ids are written as the machine stores them: refuse a big-endian host rather than byte-swap.
  static_assert(std::endian::native == std::endian::little, "msa-tokenize writes little-endian");
  out.write(reinterpret_cast<const char*>(values.data()),
            static_cast<std::streamsize>(values.size() * sizeof(uint32_t)));
  if (!out) return absl::InternalError(absl::StrFormat("cannot write '%s'", path));
  return absl::OkStatus();
}

absl::Status run() {
  const std::string tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  const std::string input = absl::GetFlag(FLAGS_input), output = absl::GetFlag(FLAGS_output);
  const int threads = absl::GetFlag(FLAGS_threads);
  if (tokenizer_path.empty()) return absl::InvalidArgumentError("invalid --tokenizer: required");
  if (input.empty()) return absl::InvalidArgumentError("invalid --input: required");
  if (output.empty()) return absl::InvalidArgumentError("invalid --output: required");
  if (threads < 1) return absl::InvalidArgumentError("invalid --threads: must be >= 1");
  MSA_ASSIGN_OR_RETURN(std::unique_ptr<msa::HfTokenizer> tok,
                       msa::HfTokenizer::load(tokenizer_path));
  std::fprintf(stderr, "msa-tokenize: %s\n", tok->describe().c_str());

  // A directory opens and reads as empty; a pipe (/dev/stdin) is fine.
  if (struct stat st; ::stat(input.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid --input: '%s' is a directory, not a text file", input));
  std::ifstream in(input, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("invalid --input: cannot read '%s'", input));
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();

  std::vector<std::string_view> docs;
  if (absl::GetFlag(FLAGS_lines)) {
    size_t start = 0;
    while (start < text.size()) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      docs.push_back(std::string_view(text).substr(start, end - start));
      start = end + 1;
    }
  } else {
    docs.push_back(text);
  }

  std::vector<std::vector<uint32_t>> ids(docs.size());
  std::vector<absl::Status> errors(static_cast<size_t>(threads));
  std::atomic<size_t> next{0};
  const auto t0 = std::chrono::steady_clock::now();
  auto worker = [&](int w) {
    // Small batches of lines per grab keep threads busy without contending on the counter.
    constexpr size_t kBatch = 64;
    while (true) {
      const size_t first = next.fetch_add(kBatch);
      if (first >= docs.size()) return;
      for (size_t d = first; d < std::min(docs.size(), first + kBatch); ++d) {
        auto r = tok->encode(docs[d]);
        if (!r.ok()) {
          errors[w] = msa::annotate(r.status(), absl::StrFormat("%s, document %d", input, d));
          return;
        }
        ids[d] = *std::move(r);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < threads; ++w) pool.emplace_back(worker, w);
  worker(0);
  for (std::thread& t : pool) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const absl::Status& s : errors) MSA_RETURN_IF_ERROR(s);

  std::vector<uint32_t> all, lengths;
  size_t total = 0;
  for (const auto& v : ids) total += v.size();
  all.reserve(total);
  for (const auto& v : ids) {
    all.insert(all.end(), v.begin(), v.end());
    lengths.push_back(static_cast<uint32_t>(v.size()));
  }
  MSA_RETURN_IF_ERROR(write_u32(output, all));
  if (!absl::GetFlag(FLAGS_output_lengths).empty())
    MSA_RETURN_IF_ERROR(write_u32(absl::GetFlag(FLAGS_output_lengths), lengths));
  std::fprintf(stderr,
               "msa-tokenize: %zu document(s), %zu bytes, %zu tokens in %.3f s: %.2f MB/s "
               "(%d thread(s))\n",
               docs.size(), text.size(), total, seconds, text.size() / 1e6 / seconds, threads);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  msa::set_program_usage(
      "Encodes a text file with a Hugging Face tokenizer.json into little-endian uint32 ids.\n"
      "  msa-tokenize --tokenizer=PATH --input=FILE --output=IDS [--threads=N] [--lines]\n"
      "      without --lines the whole file is one document; with --lines each line is one\n"
      "      (ids back to back; --output_lengths=FILE gets the count per line)");
  if (msa::has_stray_arguments(absl::ParseCommandLine(argc, argv), 1, "msa-tokenize")) return 1;
  const absl::Status s = run();
  if (!s.ok()) {
    std::fprintf(stderr, "msa-tokenize: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
