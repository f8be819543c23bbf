#!/usr/bin/env bash
# Configures and builds msa-train into ./build (Release). CUDA is used when nvcc is found under
# /usr/local/cuda; pass -DMSA_CUDA=OFF (or any other CMake argument) to override. The choice holds
# for that call only: a later call without -DMSA_CUDA detects CUDA again (CMake's cache kept OFF,
# and --device=auto then trained on the CPU of a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
args=("$@")
given=0
for a in "$@"; do [[ $a == -DMSA_CUDA* ]] && given=1; done
[[ $given -eq 1 ]] || args=(-UMSA_CUDA "${args[@]}")
# A configuration from before nvcc was installed cached the CUDA compiler as not found.
if [[ -x /usr/local/cuda/bin/nvcc ]] &&
   grep -q '^CMAKE_CUDA_COMPILER:[A-Z]*=.*NOTFOUND' build/CMakeCache.txt 2>/dev/null; then
  args=(-UCMAKE_CUDA_COMPILER "${args[@]}")
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${args[@]}" >/dev/null
cmake --build build -j "$jobs"
