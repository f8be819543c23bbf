// Free memory where a rank will allocate, for the memory check before a run starts.
#pragma once

#include <optional>
#include <string>

namespace msa {

// The MemAvailable line of /proc/meminfo text, in bytes; nullopt when absent or malformed.
std::optional<double> parse_mem_available(const std::string& meminfo);

// Host memory available to new allocations (/proc/meminfo MemAvailable); nullopt when unknown.
std::optional<double> host_available_bytes();

// Free memory of the current CUDA device (cudaMemGetInfo); nullopt without CUDA or on error.
std::optional<double> cuda_free_bytes();

}  // namespace msa
