"""Timing helpers shared by the bench scripts: interleaved medians and bandwidth probes."""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Callable

import torch


def interleaved_medians(fns: dict[str, Callable[[], object]], reps: int = 25, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def matmul_rate(dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a 2048x2048 matrix product in ``dtype``: the rate the GEMM floors divide by."""
    a = torch.randn(2048, 2048).to(dtype)
    b = torch.randn(2048, 2048).to(dtype)
    t = interleaved_medians({"mm": lambda: a @ b}, reps=7)["mm"]
    return 2 * 2048 ** 3 / t


def products_line() -> str:
    """Which library grouped_mlp runs float32 CPU products on, and its 2048^3 rate when that is
    not torch.mm's own library (then the op can run below a floor measured with torch.mm)."""
    import mtlkernels

    library = mtlkernels.build_info()["cpu_float_products"]
    if library != "onednn":
        return f"grouped_mlp float32 products: {library} (torch.mm's library)"
    a, w = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = interleaved_medians({"mm": lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")}, reps=7)
    return (f"grouped_mlp float32 products: oneDNN, {2 * 2048 ** 3 / t['mm'] / 1e9:.0f} GFLOP/s at 2048^3 "
            "(the floor uses torch.mm's rate, MKL)")


def table_main(doc: str, run: Callable[[int, int, str], None], reps: int = 15) -> None:
    """Command line of the model/expert tables: ``--reps``, ``--threads`` (default 1, the bars'
    setting), ``--system-malloc``; then ``run(reps, threads, allocator label)``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--system-malloc", action="store_true")
    args = parser.parse_args()
    allocator = ensure_steady_malloc(args.system_malloc)
    run(args.reps, args.threads, allocator)


def copy_bandwidth(nbytes: int = 256 << 20, reps: int = 7) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written) on the current thread count."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = interleaved_medians({"copy": lambda: dst.copy_(src)}, reps=reps, warmup=2)["copy"]
    return 2 * nbytes / t / 1e9


# glibc returns large freed blocks to the OS, so every fresh output tensor above the mmap
# threshold is first-touched again: on these VMs a page fault costs about a microsecond and
# can dominate a millisecond-scale op. A caching allocator (CUDA's, or jemalloc/tcmalloc
# on CPU) avoids that; these settings give glibc the same steady state.
STEADY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


def ensure_steady_malloc(system_malloc: bool) -> str:
    """Re-executes this script with STEADY_MALLOC_ENV unless asked not to; returns a label."""
    if system_malloc:
        return "glibc defaults (fresh pages for large outputs)"
    if any(os.environ.get(k) != v for k, v in STEADY_MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC_ENV})
    return "glibc with mmap/trim thresholds raised (steady state, like a caching allocator)"
