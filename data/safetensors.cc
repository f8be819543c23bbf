#include "data/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>

#include "absl/strings/str_format.h"
#include "core/bf16.h"
#include "core/file_publish.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

// Header JSON larger than this is refused (real headers are a few MB at most).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

float half_to_float(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);  // subnormal (or zero)
  } else if (exp == 31) {
    v = mant ? std::nanf("") : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

uint16_t float_to_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;   // NaN
  if (abs >= 0x477ff000) return sign | 0x7c00;  // overflow (after rounding) -> inf
  if (abs < 0x38800000) {                       // subnormal half: round mant * 2^-24
    const float a = std::fabs(f);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  // Normal: rebias the exponent and round the mantissa to 10 bits, nearest even.
  uint32_t h = ((abs >> 13) - (112u << 10));
  const uint32_t rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

absl::Status bad(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrFormat("%s: malformed safetensors file: %s", path, what));
}

}  // namespace

const char* st_dtype_name(StDtype d) {
  switch (d) {
    case StDtype::kF32:
      return "F32";
    case StDtype::kF16:
      return "F16";
    case StDtype::kBF16:
      return "BF16";
  }
  return "?";
}

size_t st_dtype_size(StDtype d) { return d == StDtype::kF32 ? 4 : 2; }

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  // A FIFO would block the open below; a directory would fail to map with a vague message.
  if (struct stat pre; ::stat(path.c_str(), &pre) == 0 && !S_ISREG(pre.st_mode))
    return absl::NotFoundError(absl::StrFormat("%s: not a regular file", path));
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0)
    return absl::NotFoundError(absl::StrFormat("%s: cannot open: %s", path, std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrFormat("%s: cannot stat", path));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return bad(path, absl::StrFormat("%d bytes is too short for the 8-byte header length", size));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return absl::InternalError(absl::StrFormat("%s: mmap failed", path));
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = static_cast<const uint8_t*>(map);
  f->map_bytes_ = size;

  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(f->map_[i]) << (8 * i);
  if (n > size - 8 || n > kMaxHeaderBytes)
    return bad(path, absl::StrFormat("header length %d exceeds the file (%d bytes)", n, size));
  f->data_start_ = 8 + n;
  const uint64_t data_bytes = size - f->data_start_;
  nlohmann::json header;
  // A name listed twice is refused as the reference reader refuses it (a JSON parser keeps one
  // of the two, and readers differ on which).
  std::set<std::string> names;
  std::string duplicate;
  const nlohmann::json::parser_callback_t note_keys =
      [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string() &&
            !names.insert(parsed.get<std::string>()).second && duplicate.empty())
          duplicate = parsed.get<std::string>();
        return true;
      };
  try {
    header = nlohmann::json::parse(f->map_ + 8, f->map_ + 8 + n, note_keys);
  } catch (const nlohmann::json::exception& e) {
    return bad(path, absl::StrFormat("header is not valid JSON (%s)", e.what()));
  }
  if (!header.is_object()) return bad(path, "header is not a JSON object");
  if (!duplicate.empty()) return bad(path, absl::StrFormat("header lists '%s' twice", duplicate));

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return bad(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m)
        if (m.value().is_string()) f->metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      return bad(path, absl::StrFormat("tensor '%s' lacks dtype, shape or data_offsets", name));
    if (!v["dtype"].is_string())
      return bad(path, absl::StrFormat("tensor '%s': dtype is not a string", name));
    const std::string dtype = v["dtype"].get<std::string>();
    StTensorInfo info;
    if (dtype == "F32") {
      info.dtype = StDtype::kF32;
    } else if (dtype == "F16") {
      info.dtype = StDtype::kF16;
    } else if (dtype == "BF16") {
      info.dtype = StDtype::kBF16;
    } else {
      return bad(path, absl::StrFormat("tensor '%s' has dtype '%s' (supported: F32, F16, BF16)",
                                       name, dtype));
    }
    if (!v["shape"].is_array())
      return bad(path, absl::StrFormat("tensor '%s': shape is not an array", name));
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned())
        return bad(path,
                   absl::StrFormat("tensor '%s': shape has a non-integer or negative entry", name));
      // Every dimension and the element count at most 2^60: the byte count (x 4) and the int64
      // shape stay exact (2^62 elements of F32 wrapped to 0 bytes, a dimension past 2^63 to a
      // negative one).
      constexpr uint64_t kMaxElements = uint64_t{1} << 60;
      const uint64_t dim = d.get<uint64_t>();
      if (dim > kMaxElements || (dim != 0 && numel > kMaxElements / dim))
        return bad(path, absl::StrFormat("tensor '%s': shape overflows", name));
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      return bad(path, absl::StrFormat("tensor '%s': data_offsets is not [begin, end]", name));
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.begin > info.end || info.end > data_bytes)
      return bad(path, absl::StrFormat(
                           "tensor '%s': data_offsets [%d, %d] outside the %d-byte data section",
                           name, info.begin, info.end, data_bytes));
    if (info.end - info.begin != numel * st_dtype_size(info.dtype))
      return bad(path, absl::StrFormat("tensor '%s': %d bytes for shape %s of %s (expected %d)",
                                       name, info.end - info.begin, shape_string(info.shape), dtype,
                                       numel * st_dtype_size(info.dtype)));
    ranges.push_back({info.begin, info.end});
    f->tensors_[name] = info;
  }
  // The tensors tile the data section from its first byte to its last, as the format requires
  // (the reference reader refuses holes and trailing bytes): bytes no tensor owns are a sign of a
  // file written wrongly or appended to.
  std::sort(ranges.begin(), ranges.end());
  uint64_t covered = 0;
  for (const auto& [begin, end] : ranges) {
    if (begin < covered)
      return bad(path, absl::StrFormat("tensor byte ranges overlap at offset %d", begin));
    if (begin > covered)
      return bad(path, absl::StrFormat("data bytes [%d, %d) belong to no tensor", covered, begin));
    covered = end;
  }
  if (covered != data_bytes)
    return bad(path, absl::StrFormat("%d trailing bytes after the last tensor (the data section "
                                     "has %d bytes, the tensors %d)",
                                     data_bytes - covered, data_bytes, covered));
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(const_cast<uint8_t*>(map_), map_bytes_);
}

const uint8_t* SafetensorsFile::bytes(const std::string& name) const {
  return map_ + data_start_ + tensors_.at(name).begin;
}

absl::StatusOr<Tensor> SafetensorsFile::read_f32(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end())
    return absl::NotFoundError(absl::StrFormat("%s: no tensor '%s'", path_, name));
  const StTensorInfo& info = it->second;
  Tensor t = Tensor::empty(info.shape, DType::kF32);
  const uint8_t* p = bytes(name);
  float* out = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (info.dtype) {
      case StDtype::kF32:
        std::memcpy(&out[i], p + 4 * i, 4);
        break;
      case StDtype::kF16:
        out[i] = half_to_float(static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8)));
        break;
      case StDtype::kBF16:
        out[i] = bf16_to_float(bf16{static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8))});
        break;
    }
  }
  return t;
}

std::vector<uint8_t> encode_f32(const Tensor& t, StDtype dtype) {
  const Tensor host =
      t.dtype() == DType::kF32 && t.is_cpu() ? t : t.to(Device::kCPU).to(DType::kF32);
  std::vector<uint8_t> out(host.numel() * st_dtype_size(dtype));
  const float* in = host.data<float>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    if (dtype == StDtype::kF32) {
      std::memcpy(&out[4 * i], &in[i], 4);
      continue;
    }
    const uint16_t h = dtype == StDtype::kF16 ? float_to_half(in[i]) : float_to_bf16(in[i]).bits;
    out[2 * i] = static_cast<uint8_t>(h);
    out[2 * i + 1] = static_cast<uint8_t>(h >> 8);
  }
  return out;
}

absl::Status write_safetensors(const std::string& path, const std::vector<StTensorOut>& tensors,
                               const std::map<std::string, std::string>& metadata, bool replace) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const StTensorOut& t : tensors) {
    if (t.bytes.size() != static_cast<size_t>(shape_numel(t.shape)) * st_dtype_size(t.dtype))
      return absl::InvalidArgumentError(absl::StrFormat("%s: tensor %s has %d bytes for shape %s",
                                                        path, t.name, t.bytes.size(),
                                                        shape_string(t.shape)));
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  MSA_ASSIGN_OR_RETURN(const std::string tmp, create_temp_beside(path));
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrFormat("%s: cannot open for writing", tmp));
  }
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  bool ok =
      std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const StTensorOut& t : tensors)
    ok = ok && std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
  if (std::fclose(f) != 0 || !ok) {
    std::remove(tmp.c_str());  // a partial file of up to the model's size
    return absl::InternalError(absl::StrFormat("%s: write failed (disk full?)", tmp));
  }
  return publish_temp(tmp, path, replace);
}

}  // namespace msa
