// Learning-rate schedule: linear warm-up from 0 to max_lr at step warmup_steps, then cosine decay
// from max_lr at the peak (step warmup_steps, or step 1 without warm-up) to min_lr at total_steps
// (constant min_lr after). Steps are 1-based optimizer steps.
#pragma once

#include <cstdint>

namespace msa {

struct LrSchedule {
  double max_lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1000;

  double at(int64_t step) const;
};

}  // namespace msa
