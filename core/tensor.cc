#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/rng.h"

#if MSA_HAS_CUDA
#include <cuda_runtime.h>

#include <map>
#include <mutex>

#include "core/cuda/dtype_convert.h"
#define MSA_CUDART(call)                                                               \
  do {                                                                                 \
    cudaError_t err_ = (call);                                                         \
    MSA_CHECK(err_ == cudaSuccess, "%s failed: %s", #call, cudaGetErrorString(err_)); \
  } while (0)
#endif

namespace msa {

#if MSA_HAS_CUDA
namespace {
// Caching device allocator: cudaMalloc/cudaFree synchronize the device and cost tens of
// microseconds, and the training step allocates the same activation sizes every step. Freed
// blocks are kept per rounded size and reused; all work runs on one stream, so a block reused by
// the next allocation is ordered after the kernels that used it.
class CudaCachingAllocator {
 public:
  static CudaCachingAllocator& instance() {
    static CudaCachingAllocator* a = new CudaCachingAllocator();  // never destroyed: see free()
    return *a;
  }
  static size_t round(size_t n) {
    if (n <= (1u << 20)) return (n + 511) / 512 * 512;
    return (n + (1u << 20) - 1) / (1u << 20) * (1u << 20);
  }
  void* allocate(size_t n) {
    n = round(n);
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_use_ += n;
      peak_ = std::max(peak_, in_use_);
      auto it = free_.find(n);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, n);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      release_cached();
      MSA_CUDART(cudaMalloc(&p, n));
    }
    return p;
  }
  void free(void* p, size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ -= round(n);
    free_.emplace(round(n), p);
  }
  CudaMemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {in_use_, peak_};
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = in_use_;
  }
  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    cudaDeviceSynchronize();
    for (auto& [size, p] : free_) cudaFree(p);
    free_.clear();
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t in_use_ = 0, peak_ = 0;  // bytes handed out to tensors (rounded sizes)
};
}  // namespace
#endif

CudaMemoryStats cuda_memory_stats() {
#if MSA_HAS_CUDA
  return CudaCachingAllocator::instance().stats();
#else
  return {};
#endif
}

void reset_cuda_peak_memory() {
#if MSA_HAS_CUDA
  CudaCachingAllocator::instance().reset_peak();
#endif
}

void release_cached_cuda_memory() {
#if MSA_HAS_CUDA
  CudaCachingAllocator::instance().release_cached();
#endif
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kBF16: return 2;
    case DType::kI32: return 4;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF64: return "f64";
    case DType::kBF16: return "bf16";
    case DType::kI32: return "i32";
  }
  return "?";
}

const char* device_name(Device device) { return device == Device::kCPU ? "cpu" : "cuda"; }

std::string shape_string(const Shape& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MSA_CHECK(d >= 0, "negative dimension in shape %s", shape_string(shape));
    // A wrapped count (2^32 x 2^32 read as 0 elements) would let kernels index past the storage.
    MSA_CHECK(!__builtin_mul_overflow(n, d, &n), "shape %s has more than 2^63 elements",
              shape_string(shape));
  }
  return n;
}

bool cuda_available() {
#if MSA_HAS_CUDA
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  size_t alloc = nbytes == 0 ? 1 : nbytes;
  if (device == Device::kCPU) {
    // 64-byte alignment for vector loads; aligned_alloc needs a multiple of the alignment.
    data_ = std::aligned_alloc(64, (alloc + 63) / 64 * 64);
    MSA_CHECK(data_ != nullptr, "out of host memory allocating %zu bytes", nbytes);
  } else {
#if MSA_HAS_CUDA
    data_ = CudaCachingAllocator::instance().allocate(alloc);
#else
    MSA_CHECK(false, "CUDA tensor requested but this build has no CUDA (configure with -DMSA_CUDA=ON)");
#endif
  }
}

Storage::~Storage() {
  if (device_ == Device::kCPU) {
    std::free(data_);
  } else {
#if MSA_HAS_CUDA
    CudaCachingAllocator::instance().free(data_, nbytes_ == 0 ? 1 : nbytes_);
#endif
  }
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

template <class T>
Tensor Tensor::from_vector(const Shape& shape, const std::vector<T>& values) {
  Tensor t = empty(shape, dtype_of<T>());
  MSA_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "from_vector: %zu values for shape %s",
            values.size(), shape_string(shape));
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), t.nbytes());
  return t;
}
template Tensor Tensor::from_vector<float>(const Shape&, const std::vector<float>&);
template Tensor Tensor::from_vector<double>(const Shape&, const std::vector<double>&);
template Tensor Tensor::from_vector<int32_t>(const Shape&, const std::vector<int32_t>&);
template Tensor Tensor::from_vector<bf16>(const Shape&, const std::vector<bf16>&);

int64_t Tensor::size(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  MSA_CHECK(i >= 0 && i < n, "dimension %d out of range for %s", i, describe());
  return shape_[i];
}

void* Tensor::raw_data() const {
  MSA_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_bytes_;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      MSA_CHECK(infer < 0, "view: more than one -1 in %s", shape_string(shape));
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    MSA_CHECK(known > 0 && numel_ % known == 0, "view: cannot infer %s from %s",
              shape_string(shape), describe());
    s[infer] = numel_ / known;
  }
  MSA_CHECK(shape_numel(s) == numel_, "view: %s has a different element count than %s",
            shape_string(s), describe());
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  MSA_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
            "slice0(%d, %d) out of range for %s", begin, end, describe());
  Tensor t = *this;
  int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.offset_bytes_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  MSA_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_from: %s into %s", src.describe(),
            describe());
  if (nbytes() == 0) return;
  if (is_cpu() && src.is_cpu()) {
    std::memmove(raw_data(), src.raw_data(), nbytes());
    return;
  }
#if MSA_HAS_CUDA
  MSA_CUDART(cudaMemcpy(raw_data(), src.raw_data(), nbytes(), cudaMemcpyDefault));
#else
  MSA_CHECK(false, "copy between devices needs a CUDA build");
#endif
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

namespace {
// A double as element type T (bf16 rounded once, to nearest even). `what` names the operation in
// the message when an i32 cannot hold the value.
template <class T>
T from_double(double v, const char* what) {
  if constexpr (std::is_same_v<T, bf16>) {
    return double_to_bf16(v);
  } else if constexpr (std::is_same_v<T, int32_t>) {
    // A NaN or out-of-range value has no int32 (the cast is undefined behaviour).
    MSA_CHECK(v >= -2147483648.0 && v <= 2147483647.0,
              "%s %g: not finite or out of the int32 range", what, v);
    return static_cast<int32_t>(v);
  } else {
    return static_cast<T>(v);
  }
}

template <class Src, class Dst>
void convert_cpu(const Src* src, Dst* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double v;
    if constexpr (std::is_same_v<Src, bf16>) v = bf16_to_float(src[i]);
    else v = static_cast<double>(src[i]);
    dst[i] = from_double<Dst>(v, "converting to i32:");
  }
}

template <class Fn>
void visit_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32: fn(float{}); break;
    case DType::kF64: fn(double{}); break;
    case DType::kBF16: fn(bf16{}); break;
    case DType::kI32: fn(int32_t{}); break;
  }
}
}  // namespace

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
#if MSA_HAS_CUDA
  if (is_cuda() && cuda::can_convert_on_device(dtype_, dtype)) {
    Tensor dst = empty(shape_, dtype, device_);
    cuda::convert_on_device(raw_data(), dtype_, dst.raw_data(), dtype, numel_);
    return dst;
  }
#endif
  Tensor src = to(Device::kCPU);
  Tensor dst = empty(shape_, dtype, Device::kCPU);
  visit_dtype(dtype_, [&](auto s) {
    visit_dtype(dtype, [&](auto d) {
      using S = decltype(s);
      using D = decltype(d);
      convert_cpu(static_cast<const S*>(src.raw_data()), static_cast<D*>(dst.raw_data()), numel_);
    });
  });
  return dst.to(device_);
}

void Tensor::zero_() {
  if (nbytes() == 0) return;
  if (is_cpu()) {
    std::memset(raw_data(), 0, nbytes());
    return;
  }
#if MSA_HAS_CUDA
  MSA_CUDART(cudaMemset(raw_data(), 0, nbytes()));
#endif
}

void Tensor::fill_(double value) {
  Tensor host = empty(shape_, dtype_, Device::kCPU);
  visit_dtype(dtype_, [&](auto x) {
    using T = decltype(x);
    T* p = static_cast<T*>(host.raw_data());
    const T v = from_double<T>(value, "fill_ of an i32 tensor:");
    for (int64_t i = 0; i < numel_; ++i) p[i] = v;
  });
  copy_from(host);
}

std::vector<double> Tensor::to_double_vector() const {
  Tensor h = to(Device::kCPU).to(DType::kF64);
  const double* p = static_cast<const double*>(h.raw_data());
  return std::vector<double>(p, p + numel_);
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return absl::StrFormat("%s%s on %s", dtype_name(dtype_), shape_string(shape_), device_name(device_));
}

void check_shape(const Tensor& t, const Shape& expected, const char* name) {
  MSA_CHECK(t.defined(), "%s is undefined, expected shape %s", name, shape_string(expected));
  MSA_CHECK(t.shape() == expected, "%s has shape %s, expected %s", name, shape_string(t.shape()),
            shape_string(expected));
}

void check_dtype(const Tensor& t, DType expected, const char* name) {
  MSA_CHECK(t.dtype() == expected, "%s has dtype %s, expected %s", name, dtype_name(t.dtype()),
            dtype_name(expected));
}

void check_same_device(const Tensor& a, const Tensor& b, const char* name_a, const char* name_b) {
  MSA_CHECK(a.device() == b.device(), "%s is on %s but %s is on %s", name_a, device_name(a.device()),
            name_b, device_name(b.device()));
}

namespace {
template <class Draw>
void fill_with(Tensor& t, Draw draw) {
  Tensor host = Tensor::empty(t.shape(), t.dtype(), Device::kCPU);
  visit_dtype(t.dtype(), [&](auto x) {
    using T = decltype(x);
    T* p = static_cast<T*>(host.raw_data());
    for (int64_t i = 0; i < t.numel(); ++i) {
      float v = draw(static_cast<uint64_t>(i));
      if constexpr (std::is_same_v<T, bf16>) p[i] = float_to_bf16(v);
      else p[i] = static_cast<T>(v);
    }
  });
  t.copy_from(host);
}
}  // namespace

void fill_normal(Tensor& t, uint64_t seed, float mean, float std) {
  fill_with(t, [&](uint64_t i) { return mean + std * rng_normal(seed, i); });
}

void fill_uniform(Tensor& t, uint64_t seed, float lo, float hi) {
  fill_with(t, [&](uint64_t i) { return lo + (hi - lo) * (1.0f - rng_uniform(seed, i)); });
}

}  // namespace msa
