#!/usr/bin/env python3
"""PyTorch baselines for the CUDA kernel benchmarks, on the same GPU and in the same
session as `cargo bench --bench quant_gemm -- int_mma` / `-- byte_mma`:

- device-to-device copy bandwidth (the ceiling for weight-streaming GEMMs),
- bf16 `torch.matmul` (cuBLAS),
- `torch._weight_int4pack_mm` (tinygemm W4A16, group 128),
- `torch._scaled_mm` (FP8 e4m3, row-wise scales),
- `torch._int_mm` (int8 × int8 → int32).

Times are per call, in microseconds: calls queued back to back in runs of 32 between two
CUDA events, the median run divided by 32 (the way `benches/quant_gemm.rs` times the
tensor-core kernels, so launch costs count on both sides as they do in a model's forward
pass), printed as one JSON object per line. A baseline the installed PyTorch refuses for a shape (some need
M ≥ 16 or 17) is timed at the smallest M it takes, and the line says so; one it cannot
run at all prints its error. Usage: `python3 scripts/torch_baselines.py [int4|byte|all]`.
"""

import json
import sys

import torch

INT4_SHAPES = [(4096, 14336), (14336, 4096), (4096, 4096)]
INT4_ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BYTE_SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]
BYTE_ROWS = [1, 16, 128, 1024, 4096]
GROUP = 128


QUEUE_DEPTH = 32


def median_us(fn, warmup=10, runs=15):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(QUEUE_DEPTH):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / QUEUE_DEPTH)
    times.sort()
    return times[len(times) // 2]


def report(**fields):
    print(json.dumps(fields), flush=True)


def copy_bandwidth():
    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    # A copy reads and writes every byte.
    report(baseline="copy", bytes=size, us=us, gb_per_s=2 * size / us / 1e3)


def timed(baseline, fn, min_rows, m, **fields):
    """Times `fn(rows)` at `m` rows, or at `min_rows` when the op refuses fewer."""
    rows = max(m, min_rows)
    try:
        us = median_us(lambda: fn(rows))
    except Exception as error:  # noqa: BLE001 - report what this PyTorch build refuses
        report(baseline=baseline, m=m, error=str(error).splitlines()[0], **fields)
        return
    extra = {} if rows == m else {"timed_at_m": rows}
    report(baseline=baseline, m=m, us=us, **fields, **extra)


def int4_baselines():
    for k, n in INT4_SHAPES:
        for dtype in (torch.bfloat16, torch.float16):
            weight = torch.randn(n, k, device="cuda", dtype=dtype)
            x_all = torch.randn(max(INT4_ROWS), k, device="cuda", dtype=dtype)
            w_t = weight.t().contiguous()
            for m in INT4_ROWS:
                timed("cublas_matmul", lambda rows: torch.matmul(x_all[:rows], w_t), 1, m, k=k, n=n, dtype=str(dtype))
        # tinygemm takes bf16 activations: int4 codes [N, K/2] as uint8, and bf16
        # scales and zeros [K/group, N, 2].
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
        packed = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        try:
            weight_packed = torch._convert_weight_to_int4pack(packed, 8)
        except Exception as error:  # noqa: BLE001
            report(baseline="tinygemm", k=k, n=n, error=str(error).splitlines()[0])
            continue
        scales_zeros = torch.rand(k // GROUP, n, 2, device="cuda", dtype=torch.bfloat16)
        x_all = torch.randn(max(INT4_ROWS), k, device="cuda", dtype=torch.bfloat16)
        for m in INT4_ROWS:
            timed("tinygemm", lambda rows: torch._weight_int4pack_mm(x_all[:rows], weight_packed, GROUP, scales_zeros), 1, m, k=k, n=n, dtype="torch.bfloat16")


def byte_baselines():
    for k, n in BYTE_SHAPES:
        rows = max(BYTE_ROWS)
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        w_t = weight.t().contiguous()
        a_fp8 = x.to(torch.float8_e4m3fn)
        # `_scaled_mm` wants the second operand column-major: the transpose of [N, K].
        w_fp8 = weight.to(torch.float8_e4m3fn).t()
        a_scale = torch.rand(rows, 1, device="cuda", dtype=torch.float32)
        w_scale = torch.rand(1, n, device="cuda", dtype=torch.float32)
        a_int8 = torch.randint(-128, 128, (rows, k), dtype=torch.int8, device="cuda")
        w_int8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda").t()
        for m in BYTE_ROWS:
            timed("cublas_matmul", lambda r: torch.matmul(x[:r], w_t), 1, m, k=k, n=n, dtype="torch.bfloat16")
            timed(
                "scaled_mm_rowwise",
                lambda r: torch._scaled_mm(a_fp8[:r], w_fp8, scale_a=a_scale[:r], scale_b=w_scale, out_dtype=torch.bfloat16),
                16,
                m,
                k=k,
                n=n,
            )
            timed("int_mm", lambda r: torch._int_mm(a_int8[:r], w_int8), 17, m, k=k, n=n)


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    report(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda)
    copy_bandwidth()
    if which in ("int4", "all"):
        int4_baselines()
    if which in ("byte", "all"):
        byte_baselines()


if __name__ == "__main__":
    main()
