#include "train/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/file_publish.h"
#include "core/fnv1a.h"
#include "core/status.h"
#include "model/parameters.h"

namespace msa {
namespace {

// Version 2 adds the RoPE variants to the config JSON (rope_scaling, rotary_dim); version 3 the
// index branch's RoPE (msa.index_rotary_dim). A checkpoint is written as the lowest version that
// holds its config, so that builds reading only older versions refuse it instead of running it
// without the variant; a checkpoint that uses none stays version 1.
constexpr int64_t kFormatVersion = 3;
int64_t format_version_for(const ModelConfig& c) {
  if (c.msa.index_rotary_dim != 0) return kFormatVersion;
  return c.plain_rope() ? 1 : 2;
}
constexpr char kChecksumAttr[] = "fnv1a64";
const char* const kStateFields[] = {"step", "tokens_seen", "seed", "sample_cursor", "lr_step"};
// Optional: files written before it was recorded have none (read as 0).
const char kNonfiniteInARowField[] = "nonfinite_in_a_row";
const char kSkippedStepsField[] = "skipped_steps";
const char kSkippedWarmupStepsField[] = "skipped_warmup_steps";

uint64_t fnv1a_bytes(const void* data, size_t n) {
  return fnv1a64(std::string_view(static_cast<const char*>(data), n));
}

// Closes an HDF5 handle on scope exit.
class H5Handle {
 public:
  H5Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~H5Handle() {
    if (id_ >= 0) close_(id_);
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  H5Handle(H5Handle&& other) noexcept : id_(other.id_), close_(other.close_) { other.id_ = -1; }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// HDF5 prints its error stack to stderr by default; we report errors ourselves.
void silence_hdf5() {
  static const bool once = [] {
    // A file whose close failed (a full disk) stays open inside the library, and HDF5's exit
    // handler then crashed closing it again (SIGSEGV after the error was reported). Every handle
    // here is closed by its owner, so the handler has nothing else to do. (Effective only before
    // the library initializes: tests that call HDF5 first keep the handler.)
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
}

absl::Status write_error(const std::string& path, const std::string& what) {
  return absl::InternalError(absl::StrFormat("%s: cannot write %s", path, what));
}

absl::Status write_checksum(hid_t dataset, uint64_t sum) {
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle attr(
      H5Acreate2(dataset, kChecksumAttr, H5T_STD_U64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
      H5Aclose);
  if (!attr.ok() || H5Awrite(attr.get(), H5T_NATIVE_UINT64, &sum) < 0)
    return absl::InternalError("cannot write checksum attribute");
  return absl::OkStatus();
}

absl::Status write_f32(const std::string& path, hid_t loc, const std::string& name,
                       const Tensor& t) {
  const Tensor host = t.is_cpu() && t.dtype() == DType::kF32
                          ? t
                          : (t.is_cpu() ? t : t.to(Device::kCPU)).to(DType::kF32);
  std::vector<hsize_t> dims(host.shape().begin(), host.shape().end());
  H5Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  H5Handle ds(H5Dcreate2(loc, name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                         H5P_DEFAULT),
              H5Dclose);
  if (!ds.ok() ||
      H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, host.data<float>()) < 0)
    return write_error(path, "dataset " + name);
  // Checksum of the little-endian bytes as stored (x86 and the GPU hosts are
  // little-endian).
  return annotate(write_checksum(ds.get(), fnv1a_bytes(host.data<float>(), host.nbytes())),
                  path + ": " + name);
}

absl::Status write_i64(const std::string& path, hid_t loc, const char* name, int64_t value) {
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle ds(
      H5Dcreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      H5Dclose);
  if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) < 0)
    return write_error(path, std::string("/state/") + name);
  return write_checksum(ds.get(), fnv1a_bytes(&value, sizeof(value)));
}

absl::Status write_string_attr(const std::string& path, hid_t loc, const char* name,
                               const std::string& value) {
  H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Handle attr(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  if (!attr.ok() || H5Awrite(attr.get(), type.get(), padded.data()) < 0)
    return write_error(path, std::string("/config attribute ") + name);
  return absl::OkStatus();
}

// The /config group's checksum: its three attributes, each followed by a NUL (none holds one).
uint64_t config_checksum(const std::string& model, const std::string& run,
                         const std::string& version) {
  std::string bytes = model;
  bytes += '\0';
  bytes += run;
  bytes += '\0';
  bytes += version;
  bytes += '\0';
  return fnv1a_bytes(bytes.data(), bytes.size());
}

hid_t make_group(hid_t loc, const std::string& name) {
  return H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
}

// The index of the first non-finite value of `t` (any device / dtype), or -1.
int64_t first_non_finite(const Tensor& t) {
  const Tensor host = t.is_cpu() && t.dtype() == DType::kF32
                          ? t
                          : (t.is_cpu() ? t : t.to(Device::kCPU)).to(DType::kF32);
  const float* p = host.data<float>();
  const int64_t n = host.numel();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

std::string non_finite_what(const Tensor& t, int64_t at) {
  const Tensor host = t.is_cpu() && t.dtype() == DType::kF32
                          ? t
                          : (t.is_cpu() ? t : t.to(Device::kCPU)).to(DType::kF32);
  return absl::StrFormat("holds a non-finite value (%g at element %d of %d)",
                         host.data<float>()[at], at, host.numel());
}

// ---- reading
// -------------------------------------------------------------------------------

absl::StatusOr<std::string> read_string_attr(const std::string& path, hid_t loc, const char* name) {
  if (H5Aexists(loc, name) <= 0)
    return absl::DataLossError(absl::StrFormat("%s: missing /config attribute '%s'", path, name));
  H5Handle attr(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  H5Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (!attr.ok() || H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    return absl::DataLossError(
        absl::StrFormat("%s: /config attribute '%s' is not a fixed-length string", path, name));
  // One string, not an array of them: H5Aread would write every element into a buffer sized
  // for one (a crafted /config crashed every loader, and --resume with it).
  H5Handle space(H5Aget_space(attr.get()), H5Sclose);
  if (!space.ok() || H5Sget_simple_extent_npoints(space.get()) != 1)
    return absl::DataLossError(
        absl::StrFormat("%s: /config attribute '%s' is not one string", path, name));
  std::string value(H5Tget_size(type.get()), '\0');
  if (H5Aread(attr.get(), type.get(), value.data()) < 0)
    return absl::DataLossError(
        absl::StrFormat("%s: cannot read /config attribute '%s'", path, name));
  value.resize(std::strlen(value.c_str()));
  return value;
}

// True when `type` is an integer type and `space` holds exactly one element: what a scalar read
// into one int64 / uint64 may take (a corrupt file's array would overflow it).
bool is_one_integer(hid_t type, hid_t space) {
  return type >= 0 && space >= 0 && H5Tget_class(type) == H5T_INTEGER &&
         H5Sget_simple_extent_npoints(space) == 1;
}

absl::StatusOr<uint64_t> read_checksum(const std::string& path, hid_t ds, const std::string& name) {
  if (H5Aexists(ds, kChecksumAttr) <= 0)
    return absl::DataLossError(absl::StrFormat("%s: dataset %s has no '%s' checksum attribute",
                                               path, name, kChecksumAttr));
  H5Handle attr(H5Aopen(ds, kChecksumAttr, H5P_DEFAULT), H5Aclose);
  if (!attr.ok())
    return absl::DataLossError(absl::StrFormat("%s: cannot read the checksum of %s", path, name));
  H5Handle type(H5Aget_type(attr.get()), H5Tclose);
  H5Handle space(H5Aget_space(attr.get()), H5Sclose);
  if (!is_one_integer(type.get(), space.get()))
    return absl::DataLossError(absl::StrFormat(
        "%s: the '%s' checksum attribute of %s is not one integer", path, kChecksumAttr, name));
  uint64_t sum = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_UINT64, &sum) < 0)
    return absl::DataLossError(absl::StrFormat("%s: cannot read the checksum of %s", path, name));
  return sum;
}

// The shape of dataset `name`, or nullopt when it is absent or unreadable (read_f32 reports why).
std::optional<Shape> dataset_shape(hid_t file, const std::string& name) {
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0) return std::nullopt;
  H5Handle ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.ok()) return std::nullopt;
  H5Handle space(H5Dget_space(ds.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) return std::nullopt;
  std::vector<hsize_t> dims(rank);
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

// Checkpoints written before the MSA selector became the paper's hold one index key head per KV
// group (W_IK [G * d_I, D], selection by mean-pooled block keys); this build has one shared head
// (W_IK [d_I, D], max-pooled token scores). With G > 1 the shapes tell them apart: refuse such a
// file with the reason instead of a bare shape mismatch. (With G = 1 the shapes coincide.)
absl::Status check_index_key_format(const std::string& path, hid_t file, const ModelConfig& c) {
  if (c.n_kv_heads <= 1) return absl::OkStatus();
  const int64_t G = c.n_kv_heads, dI = c.msa.index_dim, D = c.d_model;
  for (int l = 0; l < c.n_layers; ++l) {
    if (c.layer_kind(l) != AttentionKind::kMsa) continue;
    const std::string name = absl::StrFormat("/params/layers.%d.attn.index_wk.weight", l);
    const std::optional<Shape> shape = dataset_shape(file, name);
    if (shape && *shape == Shape{G * dI, D})
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: dataset %s has shape %s, one index key head per KV group (G * d_I = %d * %d rows): "
          "the file was written before the MSA selector changed to the paper's single index key "
          "head shared by the groups (%s); it cannot be loaded. Convert the dense model again with "
          "msa-convert, or re-train (docs/checkpoint.md)",
          path, name, shape_string(*shape), G, dI, shape_string(Shape{dI, D})));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> read_f32(const std::string& path, hid_t file, const std::string& name,
                                const Shape& expected) {
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0)
    return absl::DataLossError(absl::StrFormat("%s: missing dataset %s", path, name));
  H5Handle ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.ok())
    return absl::DataLossError(absl::StrFormat("%s: cannot open dataset %s", path, name));
  H5Handle type(H5Dget_type(ds.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_FLOAT || H5Tget_size(type.get()) != 4)
    return absl::DataLossError(absl::StrFormat("%s: dataset %s is not float32", path, name));
  H5Handle space(H5Dget_space(ds.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(std::max(rank, 0));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  const Shape shape(dims.begin(), dims.end());
  if (shape != expected)
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: dataset %s has shape %s but the config in the file needs %s", path,
                        name, shape_string(shape), shape_string(expected)));
  Tensor t = Tensor::empty(shape, DType::kF32);
  if (H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data<float>()) < 0)
    return absl::DataLossError(
        absl::StrFormat("%s: cannot read dataset %s (truncated file?)", path, name));
  MSA_ASSIGN_OR_RETURN(uint64_t stored, read_checksum(path, ds.get(), name));
  const uint64_t actual = fnv1a_bytes(t.data<float>(), t.nbytes());
  if (stored != actual)
    return absl::DataLossError(
        absl::StrFormat("%s: checksum mismatch in dataset %s (stored %016x, "
                        "computed %016x): the data is corrupt",
                        path, name, stored, actual));
  if (const int64_t at = first_non_finite(t); at >= 0)
    return absl::DataLossError(absl::StrFormat(
        "%s: dataset %s %s: the run that wrote it had diverged (NaN/inf weights or moments); "
        "resume from an earlier checkpoint with a lower --lr (docs/checkpoint.md)",
        path, name, non_finite_what(t, at)));
  return t;
}

absl::StatusOr<int64_t> read_i64(const std::string& path, hid_t file, const std::string& name) {
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0)
    return absl::DataLossError(absl::StrFormat("%s: missing dataset %s", path, name));
  H5Handle ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds.ok())
    return absl::DataLossError(absl::StrFormat("%s: cannot open dataset %s", path, name));
  H5Handle type(H5Dget_type(ds.get()), H5Tclose);
  H5Handle space(H5Dget_space(ds.get()), H5Sclose);
  if (!is_one_integer(type.get(), space.get()))
    return absl::DataLossError(
        absl::StrFormat("%s: dataset %s is not one integer (a scalar int64)", path, name));
  int64_t value = 0;
  if (H5Dread(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) < 0)
    return absl::DataLossError(absl::StrFormat("%s: cannot read dataset %s", path, name));
  MSA_ASSIGN_OR_RETURN(uint64_t stored, read_checksum(path, ds.get(), name));
  if (stored != fnv1a_bytes(&value, sizeof(value)))
    return absl::DataLossError(absl::StrFormat("%s: checksum mismatch in dataset %s", path, name));
  return value;
}

}  // namespace

std::string checkpoint_path(const std::string& dir, int64_t step) {
  return absl::StrFormat("%s/ckpt-%08d.h5", dir, step);
}

absl::Status save_checkpoint(const std::string& path, const Checkpoint& ckpt, bool replace) {
  silence_hdf5();
  const std::vector<ParamSpec> specs = model_param_specs(ckpt.config);
  const bool with_optimizer = !ckpt.m.empty() || !ckpt.v.empty();
  for (const ParamSpec& s : specs) {
    if (!ckpt.params.count(s.name) ||
        (with_optimizer && (!ckpt.m.count(s.name) || !ckpt.v.count(s.name))))
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: no tensor for parameter %s", path, s.name));
  }
  {
    absl::Status finite = check_finite(ckpt.params, "/params/");
    if (finite.ok() && with_optimizer) finite = check_finite(ckpt.m, "/optimizer/", "/m");
    if (finite.ok() && with_optimizer) finite = check_finite(ckpt.v, "/optimizer/", "/v");
    if (!finite.ok())
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: refusing to write a checkpoint from non-finite state: %s", path, finite.message()));
  }
  // A run's checkpoint directory is its own (locked): its temporary name is fixed, so a crash
  // leaves at most one per step. Anywhere else it is unique and created exclusively.
  std::string tmp = path + ".tmp";
  if (!replace) {
    MSA_ASSIGN_OR_RETURN(tmp, create_temp_beside(path));
  }
  // The temporary file goes when anything fails (a full disk): only complete files are renamed.
  absl::Status written = [&]() -> absl::Status {
    H5Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (!file.ok()) return absl::InternalError(absl::StrFormat("%s: cannot create file", tmp));
    {
      H5Handle config(make_group(file.get(), "/config"), H5Gclose);
      const std::string model = ckpt.config.to_json();
      const std::string version = std::to_string(format_version_for(ckpt.config));
      MSA_RETURN_IF_ERROR(write_string_attr(tmp, config.get(), "model", model));
      MSA_RETURN_IF_ERROR(write_string_attr(tmp, config.get(), "run", ckpt.run_json));
      MSA_RETURN_IF_ERROR(write_string_attr(tmp, config.get(), "format_version", version));
      MSA_RETURN_IF_ERROR(
          annotate(write_checksum(config.get(), config_checksum(model, ckpt.run_json, version)),
                   tmp + ": /config"));
    }
    {
      H5Handle params(make_group(file.get(), "/params"), H5Gclose);
      for (const ParamSpec& s : specs)
        MSA_RETURN_IF_ERROR(write_f32(tmp, params.get(), s.name, ckpt.params.at(s.name)));
    }
    if (with_optimizer) {
      H5Handle opt(make_group(file.get(), "/optimizer"), H5Gclose);
      for (const ParamSpec& s : specs) {
        H5Handle g(make_group(opt.get(), s.name), H5Gclose);
        MSA_RETURN_IF_ERROR(write_f32(tmp, g.get(), "m", ckpt.m.at(s.name)));
        MSA_RETURN_IF_ERROR(write_f32(tmp, g.get(), "v", ckpt.v.at(s.name)));
      }
    }
    {
      H5Handle state(make_group(file.get(), "/state"), H5Gclose);
      const TrainState& st = ckpt.state;
      const int64_t values[] = {st.step, st.tokens_seen, st.seed, st.sample_cursor, st.lr_step};
      for (int i = 0; i < 5; ++i)
        MSA_RETURN_IF_ERROR(write_i64(tmp, state.get(), kStateFields[i], values[i]));
      MSA_RETURN_IF_ERROR(
          write_i64(tmp, state.get(), kNonfiniteInARowField, st.nonfinite_in_a_row));
      MSA_RETURN_IF_ERROR(write_i64(tmp, state.get(), kSkippedStepsField, st.skipped_steps));
      MSA_RETURN_IF_ERROR(
          write_i64(tmp, state.get(), kSkippedWarmupStepsField, st.skipped_warmup_steps));
    }
    if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0)
      return absl::InternalError(absl::StrFormat("%s: flush failed (disk full?)", tmp));
    return absl::OkStatus();
  }();
  if (!written.ok()) {
    std::remove(tmp.c_str());
    return written;
  }
  if (std::getenv(kCrashBeforeRenameEnv) != nullptr) std::raise(SIGKILL);
  return publish_temp(tmp, path, replace);
}

namespace {

// Opens `path` and reads its validated /config (the model and the run options) into `ckpt`.
absl::StatusOr<H5Handle> open_and_read_config(const std::string& path, Checkpoint& ckpt) {
  silence_hdf5();
  if (::access(path.c_str(), R_OK) != 0)
    return absl::NotFoundError(absl::StrFormat("%s: no such checkpoint file", path));
  if (struct stat st; ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: a directory, not a checkpoint file (its checkpoints are %s/ckpt-<step>.h5)", path,
        path));
  if (H5Fis_hdf5(path.c_str()) <= 0)
    return absl::DataLossError(
        absl::StrFormat("%s: not a readable HDF5 file (truncated or corrupt)", path));
  H5Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok())
    return absl::DataLossError(
        absl::StrFormat("%s: cannot open as HDF5 (truncated or corrupt)", path));
  if (H5Lexists(file.get(), "/config", H5P_DEFAULT) <= 0)
    return absl::DataLossError(absl::StrFormat("%s: missing group /config", path));
  {
    H5Handle config(H5Gopen2(file.get(), "/config", H5P_DEFAULT), H5Gclose);
    MSA_ASSIGN_OR_RETURN(std::string version,
                         read_string_attr(path, config.get(), "format_version"));
    bool known = false;
    for (int64_t v = 1; v <= kFormatVersion; ++v) known = known || version == std::to_string(v);
    if (!known)
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: checkpoint format version %s, this build reads 1 to %d", path,
                          version, kFormatVersion));
    MSA_ASSIGN_OR_RETURN(std::string model_json, read_string_attr(path, config.get(), "model"));
    auto config_or = ModelConfig::from_json(model_json);
    if (!config_or.ok()) return annotate(config_or.status(), path + ": /config model");
    ckpt.config = *config_or;
    if (version != std::to_string(format_version_for(ckpt.config)))
      return absl::DataLossError(absl::StrFormat(
          "%s: format version %s does not match its config (version %d holds it: 2 for RoPE "
          "variants, 3 for the index branch's RoPE)",
          path, version, format_version_for(ckpt.config)));
    MSA_ASSIGN_OR_RETURN(ckpt.run_json, read_string_attr(path, config.get(), "run"));
    // Files written before the group had a checksum have none; when there is one it must match
    // (a flipped byte in the model's JSON would otherwise build another model).
    if (H5Aexists(config.get(), kChecksumAttr) > 0) {
      MSA_ASSIGN_OR_RETURN(uint64_t stored, read_checksum(path, config.get(), "/config"));
      if (stored != config_checksum(model_json, ckpt.run_json, version))
        return absl::DataLossError(absl::StrFormat(
            "%s: checksum mismatch in the /config attributes (model, run, format_version): the "
            "file is corrupt",
            path));
    }
  }
  return file;
}

}  // namespace

absl::StatusOr<CheckpointHeader> read_checkpoint_header(const std::string& path) {
  Checkpoint ckpt;
  MSA_ASSIGN_OR_RETURN(H5Handle file, open_and_read_config(path, ckpt));
  return CheckpointHeader{ckpt.config, ckpt.run_json};
}

absl::StatusOr<Checkpoint> load_checkpoint(const std::string& path, bool weights_only) {
  Checkpoint ckpt;
  MSA_ASSIGN_OR_RETURN(H5Handle file, open_and_read_config(path, ckpt));
  MSA_RETURN_IF_ERROR(check_index_key_format(path, file.get(), ckpt.config));
  for (const ParamSpec& s : model_param_specs(ckpt.config)) {
    MSA_ASSIGN_OR_RETURN(ckpt.params[s.name],
                         read_f32(path, file.get(), "/params/" + s.name, s.shape));
    if (weights_only) continue;
    MSA_ASSIGN_OR_RETURN(ckpt.m[s.name],
                         read_f32(path, file.get(), "/optimizer/" + s.name + "/m", s.shape));
    MSA_ASSIGN_OR_RETURN(ckpt.v[s.name],
                         read_f32(path, file.get(), "/optimizer/" + s.name + "/v", s.shape));
  }
  int64_t* fields[] = {&ckpt.state.step, &ckpt.state.tokens_seen, &ckpt.state.seed,
                       &ckpt.state.sample_cursor, &ckpt.state.lr_step};
  for (int i = 0; i < 5; ++i) {
    MSA_ASSIGN_OR_RETURN(*fields[i],
                         read_i64(path, file.get(), std::string("/state/") + kStateFields[i]));
  }
  const std::string streak = std::string("/state/") + kNonfiniteInARowField;
  if (H5Lexists(file.get(), streak.c_str(), H5P_DEFAULT) > 0) {
    MSA_ASSIGN_OR_RETURN(ckpt.state.nonfinite_in_a_row, read_i64(path, file.get(), streak));
    if (ckpt.state.nonfinite_in_a_row < 0 || ckpt.state.nonfinite_in_a_row > ckpt.state.step)
      return absl::DataLossError(absl::StrFormat("%s: %s is %d, not in [0, step %d]", path, streak,
                                                 ckpt.state.nonfinite_in_a_row, ckpt.state.step));
  }
  // (0 <= skipped_warmup_steps <= skipped_steps <= step.)
  int64_t* counts[] = {&ckpt.state.skipped_steps, &ckpt.state.skipped_warmup_steps};
  const char* count_fields[] = {kSkippedStepsField, kSkippedWarmupStepsField};
  for (int i = 0; i < 2; ++i) {
    const std::string name = std::string("/state/") + count_fields[i];
    if (H5Lexists(file.get(), name.c_str(), H5P_DEFAULT) <= 0) continue;
    MSA_ASSIGN_OR_RETURN(*counts[i], read_i64(path, file.get(), name));
    const int64_t hi = i == 0 ? ckpt.state.step : ckpt.state.skipped_steps;
    if (*counts[i] < 0 || *counts[i] > hi)
      return absl::DataLossError(
          absl::StrFormat("%s: %s is %d, not in [0, %d]", path, name, *counts[i], hi));
  }
  return ckpt;
}

absl::StatusOr<Checkpoint> load_checkpoint_of_step(const std::string& path, int64_t step) {
  MSA_ASSIGN_OR_RETURN(Checkpoint ckpt, load_checkpoint(path));
  if (ckpt.state.step != step)
    return absl::DataLossError(absl::StrFormat(
        "%s: holds step %d (/state/step), not the step %d its name says: a copied or renamed "
        "file",
        path, ckpt.state.step, step));
  return ckpt;
}

std::vector<int64_t> list_checkpoint_steps(const std::string& dir) {
  std::vector<int64_t> steps;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return steps;
  while (dirent* e = ::readdir(d)) {
    long long step = 0;
    int consumed = 0;
    const std::string name = e->d_name;
    // Only the names checkpoint_path writes: "ckpt-6.h5" next to "ckpt-00000006.h5" would list
    // step 6 twice, and pruning the duplicate would delete the real file.
    if (std::sscanf(name.c_str(), "ckpt-%lld.h5%n", &step, &consumed) == 1 &&
        consumed == static_cast<int>(name.size()) && step >= 0 &&
        name == absl::StrFormat("ckpt-%08d.h5", step))
      steps.push_back(step);
  }
  ::closedir(d);
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

absl::StatusOr<LatestCheckpoint> load_latest_checkpoint(const std::string& dir) {
  std::string newest_error;
  for (int64_t step : list_checkpoint_steps(dir)) {
    const std::string path = checkpoint_path(dir, step);
    auto ckpt = load_checkpoint_of_step(path, step);
    if (ckpt.ok()) return LatestCheckpoint{path, *std::move(ckpt)};
    std::fprintf(stderr, "msa-train: skipping invalid checkpoint: %s\n",
                 std::string(ckpt.status().message()).c_str());
    if (newest_error.empty()) newest_error = std::string(ckpt.status().message());
  }
  if (!newest_error.empty())
    return absl::NotFoundError(
        absl::StrFormat("no valid checkpoint in %s (the newest: %s)", dir, newest_error));
  return absl::NotFoundError(absl::StrFormat("no valid checkpoint in %s", dir));
}

absl::Status check_finite(const std::map<std::string, Tensor>& tensors, const std::string& prefix,
                          const std::string& suffix) {
  for (const auto& [name, t] : tensors) {
    if (const int64_t at = first_non_finite(t); at >= 0)
      return absl::FailedPreconditionError(
          absl::StrFormat("%s%s%s %s", prefix, name, suffix, non_finite_what(t, at)));
  }
  return absl::OkStatus();
}

absl::Status prune_checkpoints(const std::string& dir, int keep_last, int64_t newest_valid,
                               std::set<int64_t>* known_valid) {
  if (keep_last <= 0) return absl::OkStatus();
  std::set<int64_t> local;
  std::set<int64_t>& valid = known_valid ? *known_valid : local;
  auto is_valid = [&](int64_t step) {
    if (valid.count(step)) return true;
    if (!load_checkpoint_of_step(checkpoint_path(dir, step), step).ok()) return false;
    valid.insert(step);
    return true;
  };
  if (!is_valid(newest_valid))
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s does not validate: --keep_last deletes nothing", checkpoint_path(dir, newest_valid)));
  int kept = 0;
  for (int64_t step : list_checkpoint_steps(dir)) {  // newest first
    if (step > newest_valid) continue;               // never newer than what this run validated
    if (!is_valid(step)) continue;                   // neither counted nor deleted
    if (kept < keep_last) {
      ++kept;
      continue;
    }
    const std::string path = checkpoint_path(dir, step);
    if (std::remove(path.c_str()) != 0)
      return absl::InternalError(absl::StrFormat("%s: cannot delete old checkpoint", path));
    valid.erase(step);
  }
  return absl::OkStatus();
}

}  // namespace msa
