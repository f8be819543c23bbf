// Tensor: a shaped, typed view of owning storage on the CPU or a CUDA device.
//
// Copies are shallow (they share storage, like torch.Tensor); clone() copies the data. Storage is
// always contiguous and row-major; view() reshapes and slice0() takes a range along dim 0, both
// without copying. All CUDA work is stream-ordered on the default stream unless a kernel says
// otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/check.h"

namespace msa {

enum class DType : uint8_t { kF32, kF64, kBF16, kI32 };
enum class Device : uint8_t { kCPU, kCUDA };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kF32; }
template <> constexpr DType dtype_of<double>() { return DType::kF64; }
template <> constexpr DType dtype_of<bf16>() { return DType::kBF16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::kI32; }

using Shape = std::vector<int64_t>;
std::string shape_string(const Shape& shape);
int64_t shape_numel(const Shape& shape);

// Raw owning allocation. CUDA storage is allocated with cudaMalloc (never managed memory).
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor: defined() is false

  // Uninitialized memory.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::kCPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::kCPU);
  // CPU tensor holding a copy of `values` (dtype from T).
  template <class T>
  static Tensor from_vector(const Shape& shape, const std::vector<T>& values);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cpu() const { return device_ == Device::kCPU; }
  bool is_cuda() const { return device_ == Device::kCUDA; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension i; negative i counts from the end.
  int64_t size(int i) const;
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  void* raw_data() const;
  // Typed pointer; checks that T matches dtype().
  template <class T>
  T* data() const {
    MSA_CHECK(dtype_of<T>() == dtype_, "tensor dtype is %s, accessed as %s", dtype_name(dtype_),
              dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw_data());
  }

  // Same storage, new shape with the same numel. One dimension may be -1 (inferred).
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) of dimension 0, sharing storage.
  Tensor slice0(int64_t begin, int64_t end) const;

  Tensor clone() const;
  // Copy to a device / convert dtype (f32 <-> f64 <-> bf16 on CPU; bf16 <-> f32 on either side).
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  // Copies `src` (same shape; any device pair; same dtype) into this tensor.
  void copy_from(const Tensor& src);
  void zero_();
  // Fills with `value` (CPU float/double/bf16/int; CUDA through a tiny kernel or host staging).
  void fill_(double value);

  // Host copies of the contents as double (any dtype/device). Convenient in tests.
  std::vector<double> to_double_vector() const;

  std::string describe() const;  // "f32[2, 3] on cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

// Contract helpers for kernels: abort with a message naming the tensor when violated.
void check_shape(const Tensor& t, const Shape& expected, const char* name);
void check_dtype(const Tensor& t, DType expected, const char* name);
void check_same_device(const Tensor& a, const Tensor& b, const char* name_a, const char* name_b);

// Fills with N(mean, std^2) / U[lo, hi) from the counter-based RNG: element i gets draw i of
// stream `seed`, so the contents do not depend on the device or the dtype.
void fill_normal(Tensor& t, uint64_t seed, float mean, float std);
void fill_uniform(Tensor& t, uint64_t seed, float lo, float hi);

bool cuda_available();  // true when built with CUDA and a device is present

// Device memory held by tensors (the caching allocator's view: bytes in use now and the most in
// use at once since the start or the last reset). Library workspaces (cuBLASLt, cuDNN) are not
// tensors and not counted. Zero without CUDA.
struct CudaMemoryStats {
  size_t in_use_bytes = 0;
  size_t peak_bytes = 0;
};
CudaMemoryStats cuda_memory_stats();
void reset_cuda_peak_memory();
// Returns the allocator's cached free blocks to the device (a device allocation outside tensors,
// e.g. a library workspace, retries after it when cudaMalloc runs out). No-op without CUDA.
void release_cached_cuda_memory();

}  // namespace msa
