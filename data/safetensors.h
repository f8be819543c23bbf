// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of
// JSON {"<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}}, then the data section (offsets are relative to its start).
//
// The reader validates everything before any tensor is read: the header length against the file
// size, the JSON, every dtype string, that each tensor's byte range matches its shape and dtype,
// lies inside the data section and overlaps no other. The file is memory-mapped.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace msa {

enum class StDtype { kF32, kF16, kBF16 };
const char* st_dtype_name(StDtype dtype);  // "F32", "F16", "BF16"
size_t st_dtype_size(StDtype dtype);

struct StTensorInfo {
  StDtype dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range in the data section
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, StTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor's raw little-endian bytes.
  const uint8_t* bytes(const std::string& name) const;
  // The tensor converted to f32 (exact for F16, BF16 and F32 sources).
  absl::StatusOr<Tensor> read_f32(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, StTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct StTensorOut {
  std::string name;
  StDtype dtype;
  Shape shape;
  std::vector<uint8_t> bytes;  // little-endian, numel * dtype size
};

// Encodes f32 values as `dtype` (round to nearest even for F16 / BF16).
std::vector<uint8_t> encode_f32(const Tensor& t, StDtype dtype);

// Writes a safetensors file (tensors in the given order, header padded to 8 bytes) through a
// uniquely named temporary file (removed on failure), synced and moved into place; replace =
// false never replaces an existing `path` (core/file_publish.h).
absl::Status write_safetensors(const std::string& path, const std::vector<StTensorOut>& tensors,
                               const std::map<std::string, std::string>& metadata = {},
                               bool replace = true);

}  // namespace msa
