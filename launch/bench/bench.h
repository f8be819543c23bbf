// The msa-bench tables (launch/bench_*.cc). Each returns a process exit code.
#pragma once

namespace msa::bench {

int bench_msa();    // MSA kernels vs cuDNN dense flash attention, side by side
int bench_dense();  // GEMMs and cuDNN attention at the model's shapes
int bench_step();   // whole training steps: tokens/s and MFU

}  // namespace msa::bench
