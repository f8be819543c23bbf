// Weighted sums of per-MSA-layer metrics over batches (recalls; the evaluators divide at the end).
#pragma once

#include <vector>

namespace msa {

// sum[l] += w * x[l] for every MSA layer l (sum takes x's size on first use).
inline void add_per_layer(const std::vector<double>& x, double w, std::vector<double>& sum) {
  sum.resize(x.size(), 0.0);
  for (size_t l = 0; l < x.size(); ++l) sum[l] += w * x[l];
}

}  // namespace msa
