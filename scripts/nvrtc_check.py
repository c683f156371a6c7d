#!/usr/bin/env python3
"""Compiles CUDA C++ sources with NVRTC (no GPU or driver needed), as the CUDA runtime
does before a launch; prints each failure's log and exits non-zero if any source fails.

usage: nvrtc_check.py LIBNVRTC INCLUDE_DIR ARCH SOURCE_DIR [PTX_DIR]
With PTX_DIR, each source's PTX is written there (for `ptxas -v` register counts).
"""
import ctypes
import pathlib
import sys


def main() -> int:
    lib_path, include_dir, arch, source_dir = sys.argv[1:5]
    ptx_dir = pathlib.Path(sys.argv[5]) if len(sys.argv) > 5 else None
    if ptx_dir:
        ptx_dir.mkdir(parents=True, exist_ok=True)
    nvrtc = ctypes.CDLL(lib_path)
    options = [f"--gpu-architecture={arch}".encode(), f"--include-path={include_dir}".encode(), b"-lineinfo"]
    option_array = (ctypes.c_char_p * len(options))(*options)
    sources = sorted(pathlib.Path(source_dir).glob("*.cu"))
    failures = []
    for path in sources:
        program = ctypes.c_void_p()
        status = nvrtc.nvrtcCreateProgram(ctypes.byref(program), path.read_bytes(), path.name.encode(), 0, None, None)
        if status != 0:
            failures.append((path.name, f"nvrtcCreateProgram returned {status}"))
            continue
        if nvrtc.nvrtcCompileProgram(program, len(options), option_array) != 0:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            failures.append((path.name, log.value.decode(errors="replace")))
        elif ptx_dir:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
            ptx = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetPTX(program, ptx)
            (ptx_dir / (path.stem + ".ptx")).write_bytes(ptx.value)
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    for name, log in failures:
        print(f"--- {name} ---\n{log}")
    print(f"NVRTC {arch}: {len(sources) - len(failures)} of {len(sources)} sources compiled")
    return 1 if failures or not sources else 0


if __name__ == "__main__":
    sys.exit(main())
