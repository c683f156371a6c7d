#!/usr/bin/env bash
# A GPU session's checks, run on the device machine from the binaries that
# scripts/gpu_bundle.sh left in .gpu/: the CUDA-only tests (the real mma instructions
# against the reference), the tensor-core benchmarks, and PyTorch's baselines on the same
# GPU in the same run. Logs go to $OUT, and with the benchmarks the tables for
# BENCHMARKS.md (report.md). Usage: gpu_run.sh [tests|bench|fixtures|all]; `all` may
# run past one device call's ten minutes, so run `tests`, then `bench`.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/ember-gpu}"
mkdir -p "$out"
what="${1:-all}"
for packed in .gpu/*.xz; do
  xz -d -k -f "$packed"
done
chmod +x .gpu/integration .gpu/quant_gemm 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$out/gpu.txt"
# The CUDA runtime loads NVRTC at run time: the system's, or else the one PyTorch's
# NVIDIA wheels bring.
if ! ldconfig -p | grep -q 'libnvrtc\.so'; then
  nvrtc="$(python3 -c 'import glob, site; print(next(iter(sorted(p for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/**/libnvrtc.so*", recursive=True))), ""))' 2>/dev/null || true)"
  [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
fi
# The test binary reads its fixtures under the path of the checkout it was built in.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }

if [[ "$what" == tests || "$what" == all ]]; then
  .gpu/integration --ignored --test-threads=1 int_mma_tensor_cores_on_cuda byte_mma_tensor_cores_on_cuda 2>&1 | tee "$out/tests.log"
fi
if [[ "$what" == fixtures ]]; then
  .gpu/integration --ignored --test-threads=1 --exact byte_kernels::fixtures_through_tensor_cores_on_cuda quantized_models::int_fixtures_through_tensor_cores_on_cuda 2>&1 | tee "$out/fixtures.log"
fi
if [[ "$what" == bench || "$what" == all ]]; then
  # Short criterion windows: each kernel takes microseconds to milliseconds.
  for group in int_mma byte_mma; do
    EMBER_BENCH_DEVICES=cuda .gpu/quant_gemm --bench "$group" --warm-up-time 0.2 --measurement-time 0.5 --noplot 2>&1 | tee "$out/bench_$group.log"
  done
  PYTHONUNBUFFERED=1 python3 scripts/torch_baselines.py all 2>&1 | tee "$out/torch.jsonl"
  # The tables for BENCHMARKS.md, ratios against PyTorch included.
  python3 scripts/bench_report.py "$out" | tee "$out/report.md"
fi
