#!/usr/bin/env bash
# Installs the Debian packages msa-train needs. Idempotent: does nothing (quietly) when all are present.
# CUDA 13, cuBLAS, cuDNN 9 and NCCL are expected under /usr/local/cuda and are not installed here.
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config
          libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libabsl-dev libgtest-dev libgmock-dev
          nlohmann-json3-dev libpng-dev libpcre2-dev libutf8proc-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "install_deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null ||
    { echo "install_deps: not root and no sudo: run as root (or install sudo) to install ${missing[*]}" >&2
      exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
