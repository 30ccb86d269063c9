"""Prints the gate-mixture comparison table: native vs reference, forward and
forward+backward, at 1 and 2 threads, medians of interleaved runs, with achieved GB/s
against the copy bandwidth measured in the same run.

    python bench/gate_mix_table.py [--reps 25] [--threads 1 2]

"Reference" is softmax + bmm under plain autograd (mtlkernels.reference.gate_mix).
GB/s counts the minimum traffic of the fused op: forward reads experts and logits and
writes out; backward reads grad_out, experts and logits and writes both gradients.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import copy_bandwidth, ensure_steady_malloc, interleaved_medians  # noqa: E402

from mtlkernels.ops import gate_mix  # noqa: E402
from mtlkernels.reference import gate_mix as reference_gate_mix  # noqa: E402


def ple_mask(tasks: int, own: int, shared: int) -> torch.Tensor:
    """[T, T*own + shared] mask: task t sees its own `own` experts plus the `shared` ones."""
    mask = torch.zeros(tasks, tasks * own + shared, dtype=torch.bool)
    for t in range(tasks):
        mask[t, t * own:(t + 1) * own] = True
    mask[:, tasks * own:] = True
    return mask


CONFIGS = [
    # name, B, X, T, D, mask
    ("MMoE B4096 X8 T4 D128", 4096, 8, 4, 128, None),
    ("PLE 2 tasks x 4 own + 4 shared, B4096 D128", 4096, 12, 2, 128, ple_mask(2, 4, 4)),
    ("MMoE B1024 X16 T6 D64", 1024, 16, 6, 64, None),
]


def traffic_bytes(B, X, T, D, elt, backward):
    fwd = (B * X * D + B * T * X + B * T * D) * elt
    bwd = (B * T * D + B * X * D + B * T * X + B * X * D + B * T * X) * elt
    return fwd + (bwd if backward else 0)


def run(reps: int, threads: list[int], allocator: str) -> None:
    print(f"mtlkernels gate_mix, torch {torch.__version__}, medians of {reps} interleaved runs")
    print(f"allocator: {allocator}\n")
    header = ("| threads | config | pass | native ms | reference ms | speed-up | native GB/s | "
              "copy GB/s | % of copy |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for n in threads:
        torch.set_num_threads(n)
        bw = copy_bandwidth()
        for name, B, X, T, D, mask in CONFIGS:
            torch.manual_seed(0)
            E = torch.randn(B, X, D, requires_grad=True)
            L = torch.randn(B, T, X, requires_grad=True)
            g = torch.randn(B, T, D)

            def fwd(backend):
                with torch.no_grad():
                    return gate_mix(E, L, expert_mask=mask, backend=backend)

            def fwd_bwd(backend):
                out = gate_mix(E, L, expert_mask=mask, backend=backend)
                return torch.autograd.grad(out, (E, L), g)

            for label, fn, backward in (("forward", fwd, False), ("forward+backward", fwd_bwd, True)):
                t = interleaved_medians({"native": lambda: fn("native"),
                                         "reference": lambda: fn("reference")}, reps=reps)
                gbs = traffic_bytes(B, X, T, D, 4, backward) / t["native"] / 1e9
                print(f"| {n} | {name} | {label} | {t['native'] * 1e3:.3f} | {t['reference'] * 1e3:.3f} | "
                      f"{t['reference'] / t['native']:.2f}x | {gbs:.1f} | {bw:.1f} | {100 * gbs / bw:.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's defaults: large outputs are first-touched on every call")
    args = parser.parse_args()
    allocator = ensure_steady_malloc(args.system_malloc)
    run(args.reps, args.threads, allocator)


if __name__ == "__main__":
    main()
