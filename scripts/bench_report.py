#!/usr/bin/env python3
"""Markdown tables for BENCHMARKS.md from one GPU session's logs: the criterion output of
`quant_gemm -- int_mma` and `-- byte_mma` (`bench_int_mma.log`, `bench_byte_mma.log`) and
`scripts/torch_baselines.py`'s JSON lines (`torch.jsonl`), all from the same run.

Each table puts our kernels beside PyTorch's at the same shape and row count, with the
ratios the targets are stated in: speedup over cuBLAS bf16 and tinygemm, the fraction of
the measured device-to-device copy bandwidth the W4A16 kernel reaches, and FP8 / int8
against `torch._scaled_mm` / `torch._int_mm`. Times are criterion's point estimates and
PyTorch's medians, both per call with calls queued back to back.
Usage: `python3 scripts/bench_report.py LOG_DIR > report.md`.
"""

import json
import re
import sys
from pathlib import Path

UNITS_US = {"ps": 1e-6, "ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
# A result: its id (on its own line when long), then `time: [low estimate high]`.
RESULT = re.compile(r"^(\S+)\s*(?:\n\s*)?\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", re.MULTILINE)
GROUP = 128


def criterion_times(path):
    """`{(group, function, rows): microseconds}` from a criterion log."""
    times = {}
    if not path.exists():
        return times
    for match in RESULT.finditer(path.read_text(errors="replace")):
        name, value, unit = match.groups()
        group, function, rows = name.rsplit("/", 2)
        times[(group, function, int(rows))] = float(value) * UNITS_US[unit]
    return times


def torch_times(path):
    """`(copy GB/s, {(baseline, k, n, dtype, rows): microseconds}, device line)`."""
    copy, times, device = None, {}, None
    if not path.exists():
        return copy, times, device
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "device" in entry:
            device = entry
        elif entry.get("baseline") == "copy":
            copy = entry["gb_per_s"]
        elif "us" in entry:
            dtype = entry.get("dtype", "").removeprefix("torch.")
            times[(entry["baseline"], entry["k"], entry["n"], dtype, entry["m"])] = entry["us"]
    return copy, times, device


def fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def ratio(numerator, denominator):
    return None if numerator is None or denominator is None else numerator / denominator


def cell(value, target):
    """A ratio, marked against its target when there is one."""
    if value is None or target is None:
        return fmt(value, 2)
    return f"{value:.2f} {'✓' if value >= target else '✗'}"


def int4_targets(rows):
    """What the W4A16 issue asks at `rows`: × cuBLAS, × tinygemm, copy-bandwidth fraction."""
    if rows <= 16:
        return 3.5, 1.0, 0.85
    if rows == 128:
        return 1.5, None, None
    return None, None, None


def int_mma_tables(ours, torch, copy):
    """One table per (shape, dtype): W4A16 group 128 against cuBLAS and tinygemm."""
    shapes = sorted({(group, rows) for (group, _, rows) in ours if group.startswith("int_mma")})
    lines = []
    for group in sorted({group for group, _ in shapes}):
        # int_mma_g128/cuda/BF16/4096x14336
        _, _, dtype, dims = group.split("/")
        k, n = map(int, dims.split("x"))
        torch_dtype = {"BF16": "bfloat16", "F16": "float16"}[dtype]
        lines += [
            f"#### W4A16 g{GROUP}, {dtype}, K={k} N={n}",
            "",
            "| M | ours µs | unstaged µs | weights staged µs | cuBLAS µs | tinygemm µs | × cuBLAS | × tinygemm | copy BW |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for rows in sorted(rows for g, rows in shapes if g == group):
            time = ours.get((group, "tensor_core_kernel", rows))
            cublas = torch.get(("cublas_matmul", k, n, torch_dtype, rows))
            tinygemm = torch.get(("tinygemm", k, n, "bfloat16", rows))
            # Bytes a call must move: 4-bit weights, f32 scales, activations in, output out.
            moved = k * n / 2 + k // GROUP * n * 4 + rows * (k + n) * 2
            bandwidth = None if time is None or copy is None else moved / time / 1e3 / copy
            over_cublas, over_tinygemm, of_copy = int4_targets(rows)
            lines.append(
                f"| {rows} | {fmt(time)} | {fmt(ours.get((group, 'tensor_core_unstaged', rows)))} "
                f"| {fmt(ours.get((group, 'tensor_core_weights_staged', rows)))} | {fmt(cublas)} | {fmt(tinygemm)} "
                f"| {cell(ratio(cublas, time), over_cublas)} | {cell(ratio(tinygemm, time), over_tinygemm)} | {cell(bandwidth, of_copy)} |"
            )
        lines.append("")
    return lines


def byte_mma_tables(ours, torch):
    """One table per shape: FP8 and int8 W8A8 against `_scaled_mm`, cuBLAS bf16 and `_int_mm`."""
    shapes = sorted({(group, rows) for (group, _, rows) in ours if group.startswith("byte_mma")})
    lines = []
    for group in sorted({group for group, _ in shapes}):
        k, n = map(int, group.rsplit("/", 1)[1].split("x"))
        lines += [
            f"#### FP8 / int8 W8A8, bf16 activations, K={k} N={n}",
            "",
            "| M | FP8 µs | unstaged µs | weights staged µs | static scale µs | 128-block µs | weight-only µs | int8 µs | cuBLAS µs | `_scaled_mm` µs | `_int_mm` µs | FP8 × cuBLAS | FP8 / `_scaled_mm` | int8 / `_int_mm` |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for rows in sorted(rows for g, rows in shapes if g == group):
            get = lambda function: ours.get((group, function, rows))  # noqa: E731
            fp8, int8 = get("fp8_channel_tensor_cores"), get("int8_tensor_cores")
            cublas = torch.get(("cublas_matmul", k, n, "bfloat16", rows))
            scaled_mm = torch.get(("scaled_mm_rowwise", k, n, "", rows))
            int_mm = torch.get(("int_mm", k, n, "", rows))
            lines.append(
                f"| {rows} | {fmt(fp8)} | {fmt(get('fp8_channel_unstaged'))} | {fmt(get('fp8_channel_weights_staged'))} "
                f"| {fmt(get('fp8_channel_static_scale_tensor_cores'))} | {fmt(get('fp8_block128_tensor_cores'))} "
                f"| {fmt(get('fp8_weight_only_tensor_cores'))} | {fmt(int8)} | {fmt(cublas)} | {fmt(scaled_mm)} | {fmt(int_mm)} "
                f"| {cell(ratio(cublas, fp8), 1.8 if rows <= 16 else None)} "
                f"| {cell(ratio(scaled_mm, fp8), 0.85 if rows >= 2048 else None)} | {fmt(ratio(int_mm, int8), 2)} |"
            )
        lines.append("")
    return lines


def main():
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    ours = criterion_times(directory / "bench_int_mma.log") | criterion_times(directory / "bench_byte_mma.log")
    copy, torch, device = torch_times(directory / "torch.jsonl")
    if device:
        print(f"{device['device']}, PyTorch {device['torch']}, CUDA {device['cuda']}; copy bandwidth {fmt(copy, 0)} GB/s.")
        print()
    print("\n".join(int_mma_tables(ours, torch, copy) + byte_mma_tables(ours, torch)))
    if not ours:
        sys.exit(f"no criterion results under {directory}")


if __name__ == "__main__":
    main()
