// CPU reference rotary embedding (contract in kernels/rope.h). T is float or double.
#pragma once

#include <cstdint>

namespace msa::cpu {

// x, y [batch, seq, heads, d]; y may equal x. inv_freq: the n_pairs frequencies of
// rope_inv_freq; dims [0, 2 n_pairs) of each head rotate (pairs i, i + n_pairs), the rest pass
// through. inverse = false applies R (forward), true applies R^T (backward: dx = R^T dy).
// Token p of each sequence is at position position_offset + p.
template <class T>
void rope_rotate(const T* x, T* y, int64_t batch, int64_t seq, int64_t heads, int64_t d,
                 const double* inv_freq, int64_t n_pairs, bool inverse, int64_t position_offset);

}  // namespace msa::cpu
