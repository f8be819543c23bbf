#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace msa {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step <= warmup_steps)
    return max_lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
  // The decay starts at the peak: the last warm-up step, or step 1 without warm-up (which then
  // trained at max_lr, not already below it, and --steps=1 not at min_lr).
  const int64_t peak = std::max<int64_t>(warmup_steps, 1);
  if (step <= peak) return max_lr;
  if (step >= total_steps) return min_lr;
  const double span = static_cast<double>(total_steps - peak);
  const double progress = static_cast<double>(step - peak) / span;
  return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace msa
