#!/usr/bin/env bash
# Builds the test and benchmark binaries for a GPU machine without a Rust toolchain
# (scripts/gpu_run.sh runs them there): stripped and compressed into .gpu/, which git
# ignores, about 55 MB for the two.

set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember/target}"

# The executables cargo reports for `target` (a test or bench target's name).
executable() {
  python3 -c '
import json, sys
target = sys.argv[1]
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == target and message.get("executable"):
        print(message["executable"])
' "$1" | tail -1
}

mkdir -p .gpu
tests="$(cargo test --release --no-run --message-format=json 2>/dev/null | executable integration)"
bench="$(cargo bench --profile release --bench quant_gemm --no-run --message-format=json 2>/dev/null | executable quant_gemm)"
for pair in "integration:$tests" "quant_gemm:$bench"; do
  name="${pair%%:*}"
  strip -o ".gpu/$name" "${pair#*:}"
  xz -T0 -6 -f ".gpu/$name"
done
ls -l .gpu
