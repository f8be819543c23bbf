// Which CUDA device this process computes on (DESIGN.md section 5: rank r uses GPU
// r % device_count unless told otherwise).
#pragma once

#include "absl/status/statusor.h"

namespace msa {

// Number of CUDA devices (0 without CUDA or without a device).
int cuda_device_count();

// Makes device `requested` (>= 0), or else local_rank % device_count, current for this process
// and returns it. Fails (naming --gpu) when the requested device does not exist.
absl::StatusOr<int> select_cuda_device(int local_rank, int requested);

}  // namespace msa
