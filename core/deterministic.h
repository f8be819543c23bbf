// Process-wide deterministic mode (msa-train --deterministic): when on, the GPU kernels that
// otherwise sum in a run-dependent order (f32 atomics, work lists filled by atomic cursors, cuDNN's
// attention backward) take paths whose summation order is fixed, so two runs with the same inputs
// give bit-identical results. Off by default: the default paths are faster. The CPU kernels are
// deterministic either way. Set it before the first step; kernels read it at each call.
#pragma once

namespace msa {

void set_deterministic(bool on);
bool deterministic();

// Sets the mode for a scope and restores the previous one (tests).
class ScopedDeterministic {
 public:
  explicit ScopedDeterministic(bool on) : previous_(deterministic()) { set_deterministic(on); }
  ~ScopedDeterministic() { set_deterministic(previous_); }
  ScopedDeterministic(const ScopedDeterministic&) = delete;
  ScopedDeterministic& operator=(const ScopedDeterministic&) = delete;

 private:
  bool previous_;
};

}  // namespace msa
