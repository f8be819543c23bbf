#include "launch/available_memory.h"

#include <fstream>
#include <sstream>

#if MSA_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace msa {

std::optional<double> parse_mem_available(const std::string& meminfo) {
  std::istringstream in(meminfo);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    double kib = -1;
    std::string unit;
    if (!(fields >> kib >> unit) || kib < 0 || unit != "kB") return std::nullopt;
    return kib * 1024.0;
  }
  return std::nullopt;
}

std::optional<double> host_available_bytes() {
  std::ifstream f("/proc/meminfo");
  if (!f) return std::nullopt;
  std::stringstream text;
  text << f.rdbuf();
  return parse_mem_available(text.str());
}

std::optional<double> cuda_free_bytes() {
#if MSA_HAS_CUDA
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    return std::nullopt;
  }
  return static_cast<double>(free_bytes);
#else
  return std::nullopt;
#endif
}

}  // namespace msa
