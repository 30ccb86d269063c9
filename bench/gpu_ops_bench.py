"""The op families on a CUDA device: forward+backward of gate_mix and grouped_mlp, and gram +
combine_, per backend, as medians of CUDA-event timings and ratios against the reference (plain
PyTorch) measured in the same run.

    python bench/gpu_ops_bench.py [--reps 50]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from mtlkernels import _extension
from mtlkernels.ops import combine_, gate_mix, gram, grouped_mlp


def timed(fn, reps: int) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs after 5 warm-ups."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def backends(op: str) -> list[str]:
    out = ["reference"]
    if _extension.native_available() and _extension.native_has_kernel(op, "cuda"):
        out.append("native")
    if op in ("gate_mix", "gram", "combine_") and _extension.triton_installed():
        out.append("triton")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        B, T, X, D = 16384, 4, 8, 256
        experts = torch.randn(B, X, D, device=dev, dtype=dtype, requires_grad=True)
        logits = torch.randn(B, T, X, device=dev, dtype=dtype, requires_grad=True)
        go = torch.randn(B, T, D, device=dev, dtype=dtype)
        for b in backends("gate_mix"):
            ms = timed(lambda: torch.autograd.grad(gate_mix(experts, logits, backend=b), [experts, logits], go),
                       args.reps)
            rows.append((f"gate_mix fwd+bwd B{B} T{T} X{X} D{D} {dtype}", b, ms))
        G_, widths = 8, (512, 256, 128)
        x = torch.randn(B, widths[0], device=dev, dtype=dtype, requires_grad=True)
        ws = [torch.randn(widths[0], G_, widths[1], device=dev, dtype=dtype, requires_grad=True),
              torch.randn(G_, widths[1], widths[2], device=dev, dtype=dtype, requires_grad=True)]
        bs = [torch.randn(G_, w, device=dev, dtype=dtype, requires_grad=True) for w in widths[1:]]
        for b in [k for k in backends("grouped_mlp") if k != "triton"]:
            def step(b=b):
                out = grouped_mlp(x, ws, bs, [True, True], shared_input=True, backend=b)
                return torch.autograd.grad(out.sum(), [x, *ws, *bs])
            rows.append((f"grouped_mlp fwd+bwd B{B} G{G_} {widths} {dtype}", b, timed(step, args.reps)))
        blocks = [torch.randn(T, 4_000_000, device=dev, dtype=dtype), torch.randn(T, 256, 1024, device=dev, dtype=dtype)]
        w = torch.rand(T, device=dev, dtype=torch.float64)
        out = [torch.empty(bl.shape[1:], device=dev, dtype=dtype) for bl in blocks]
        for b in backends("gram"):
            rows.append((f"gram + combine_ T{T} P4.26M {dtype}", b,
                         timed(lambda: (gram(blocks, backend=b), combine_(blocks, w, out, accumulate=False, backend=b)),
                               args.reps)))
    base = {name: ms for name, b, ms in rows if b == "reference"}
    for name, b, ms in rows:
        print(f"{name:<58} {b:<10} {ms:8.3f} ms  {base[name] / ms:6.2f}x vs reference")


if __name__ == "__main__":
    main()
