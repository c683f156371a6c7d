#!/usr/bin/env bash
# Compiles the CUDA C++ of every kernel variant with NVRTC, as the CUDA runtime does before
# a launch, and assembles the tensor-core kernels' PTX with ptxas (register and spill
# report). No GPU or driver is needed: NVRTC, the CUDA headers and ptxas come from NVIDIA's
# PyPI wheels, cached under ~/.cache/ember. Catches kernels whose generated C++ the CUDA
# compiler rejects, which the codegen test alone cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember/target}"
arch="${EMBER_NVRTC_ARCH:-sm_90a}"
cache="${EMBER_NVRTC_CACHE:-$HOME/.cache/ember/nvrtc}"
log() { printf '[nvrtc check] %s\n' "$*"; }

# The CUDA 12.9 wheels (the runtime's NVRTC loader takes 12.x).
wheels=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)
if [ ! -e "$cache/.unpacked" ]; then
  log "downloading NVRTC, the CUDA headers and ptxas (about 130 MB, once)"
  mkdir -p "$cache/wheels"
  [ -x "$cache/venv/bin/python" ] || python3 -m venv "$cache/venv"
  "$cache/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$cache/wheels" "${wheels[@]}"
  for wheel in "$cache"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$cache/unpacked"
  done
  chmod +x "$cache/unpacked/nvidia/cuda_nvcc/bin/ptxas"
  touch "$cache/.unpacked"
fi
nvrtc="$cache/unpacked/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
include="$cache/unpacked/nvidia/cuda_runtime/include"
ptxas="$cache/unpacked/nvidia/cuda_nvcc/bin/ptxas"

sources="$(mktemp -d)"
trap 'rm -rf "$sources"' EXIT
# The same build as the test command, so nothing is recompiled after `cargo test --release`.
EMBER_CUDA_DUMP_DIR="$sources/cu" cargo test --release --quiet -- every_kernel_variant_generates_cuda_cpp >/dev/null
mkdir -p "$sources/mma"
mv "$sources"/cu/int_mma_*.cu "$sources"/cu/byte_mma_*.cu "$sources/mma/"
python3 scripts/nvrtc_check.py "$nvrtc" "$include" "$arch" "$sources/cu"
python3 scripts/nvrtc_check.py "$nvrtc" "$include" "$arch" "$sources/mma" "$sources/ptx"

# Tensor-core kernels: assembled for the target (a failure here fails the check), with
# their register use and any local-memory spills reported.
for ptx in "$sources"/ptx/*.ptx; do
  report="$("$ptxas" -arch="$arch" -v -o /dev/null "$ptx" 2>&1)" || { echo "$report"; log "ptxas rejected $(basename "$ptx")"; exit 1; }
  registers="$(grep -o 'Used [0-9]* registers' <<<"$report" | head -1)"
  spills="$(grep -o '[0-9]* bytes spill stores' <<<"$report" | head -1)"
  log "$(basename "$ptx" .ptx): $registers, ${spills:-0 bytes spill stores}"
done
