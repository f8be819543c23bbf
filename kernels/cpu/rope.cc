// RoPE rotates each pair (x[i], x[i + r/2]) by the angle p f_i. The backward is the rotation by
// -p f_i (R is orthogonal), so one routine serves both. Angles, cosines and sines are computed in
// double whatever T is: at long positions p f_i is large and float angles lose the phase.
#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

namespace msa::cpu {

template <class T>
void rope_rotate(const T* x, T* y, int64_t batch, int64_t seq, int64_t heads, int64_t d,
                 const double* inv_freq, int64_t n_pairs, bool inverse, int64_t position_offset) {
  const int64_t half = n_pairs;
  // cos / sin of p f_i for every position p and pair i, shared by all sequences and heads.
  std::vector<T> cos_table(seq * half), sin_table(seq * half);
  for (int64_t i = 0; i < half; ++i) {
    for (int64_t p = 0; p < seq; ++p) {
      const double angle = static_cast<double>(position_offset + p) * inv_freq[i];
      cos_table[p * half + i] = static_cast<T>(std::cos(angle));
      sin_table[p * half + i] = static_cast<T>((inverse ? -1.0 : 1.0) * std::sin(angle));
    }
  }
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t p = 0; p < seq; ++p) {
      const T* c = cos_table.data() + p * half;
      const T* s = sin_table.data() + p * half;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t offset = ((b * seq + p) * heads + h) * d;
        const T* x_head = x + offset;
        T* y_head = y + offset;
        for (int64_t i = 0; i < half; ++i) {
          // Read both halves before writing: y may alias x.
          const T x1 = x_head[i], x2 = x_head[i + half];
          y_head[i] = x1 * c[i] - x2 * s[i];
          y_head[i + half] = x2 * c[i] + x1 * s[i];
        }
        if (y_head != x_head)
          for (int64_t j = 2 * half; j < d; ++j) y_head[j] = x_head[j];
      }
    }
  }
}

template void rope_rotate<float>(const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                 const double*, int64_t, bool, int64_t);
template void rope_rotate<double>(const double*, double*, int64_t, int64_t, int64_t, int64_t,
                                  const double*, int64_t, bool, int64_t);

}  // namespace msa::cpu
