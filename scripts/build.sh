#!/usr/bin/env bash
# Configures and builds msa-train into ./build (Release). CUDA is used when nvcc is found under
# /usr/local/cuda; pass -DMSA_CUDA=OFF (or any other CMake argument) to override.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$jobs"
