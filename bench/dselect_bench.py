"""DSelect-k forward+backward against its GEMM floor (and MMoE's, same experts and towers), at the
Census size of bench/models_table.py, fp32.

    python bench/dselect_bench.py [--reps 15] [--threads 1] [--system-malloc]

GEMM floor = the matrix-product FLOPs (forward, weight gradients, input gradients except for the
input batch) of the experts, towers and gate maps / the rate of a 2048^3 product measured in
the same run. Bar (the personalised-models issue): within 1.3x of the floor, 1 thread.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians, matmul_rate, table_main  # noqa: E402
from models_table import CONFIGS  # noqa: E402

from mtlkernels import nn as mnn  # noqa: E402


def mlp_flops(widths, batch: int, groups: int, reads_input: bool) -> float:
    """Forward + weight- + input-gradient FLOPs of ``groups`` MLPs of ``widths``; the first layer
    gets no input gradient when it reads the input batch."""
    total = 0.0
    for l, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        f = 2.0 * batch * a * b * groups
        total += 2 * f if (l == 0 and reads_input) else 3 * f
    return total


def run(reps: int, threads: int, allocator: str) -> None:
    torch.set_num_threads(threads)
    c = CONFIGS["census"]
    B, d, T, X = c["batch"], c["input_dim"], c["tasks"], c["experts"]
    rate = matmul_rate(torch.float32)
    print(f"DSelect-k vs GEMM floor, torch {torch.__version__}, {threads} thread(s), {allocator}; "
          f"fp32 GEMM {rate / 1e9:.0f} GFLOP/s\n")
    experts = mlp_flops((d, *c["expert_hidden"]), B, X, True)
    towers = mlp_flops((c["expert_hidden"][-1], *c["tower_hidden"], 1), B, T, False)
    torch.manual_seed(0)
    x = torch.randn(B, d)
    print("| model | fwd+bwd ms | GEMM floor ms | / floor |")
    print("|---|---|---|---|")
    models = {"MMoE (softmax gates)": (mnn.MMoE(d, T, X, c["expert_hidden"], c["tower_hidden"]),
                                       mlp_flops((d, X), B, T, True))}
    for per_example in (True, False):
        model = mnn.DSelectK(d, T, X, 2, c["expert_hidden"], c["tower_hidden"], per_example=per_example)
        bits = model.gates.bits
        gate_flops = mlp_flops((d, T * 2 * (bits + 1)), B, 1, True) if per_example else 0.0
        models[f"DSelect-k, k = 2, {'per-example' if per_example else 'static'} gates"] = (model, gate_flops)

    def step(model):
        def run_once():
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        return run_once

    t = interleaved_medians({name: step(m) for name, (m, _) in models.items()}, reps=reps)
    for name, (_, gates) in models.items():
        floor = (experts + towers + gates) / rate
        print(f"| {name} | {t[name] * 1e3:.2f} | {floor * 1e3:.2f} | {t[name] / floor:.2f} |")


if __name__ == "__main__":
    table_main(__doc__, run)
