"""PEPNet forward and forward+backward against its GEMM floor and against a module-per-tower
version (one nn.Linear per task and layer, each Gate NU its own nn.Sequential, the gates applied
as separate elementwise passes: the TorchEasyRec arrangement), at the Census size of
bench/models_table.py (batch 1024, 512 input columns, 2 tasks), fp32.

    python bench/pepnet_bench.py [--reps 15] [--threads 1] [--system-malloc]

PEPNet here: towers 256 -> 128 -> 64 -> 1 with every hidden layer gated, 4 gate fields (64
columns), 1 domain field (EPNet over the 512 columns), Gate NU hidden width = the gated width.
GEMM floor = the matrix-product FLOPs (forward, weight gradients, and the input gradients that
autograd needs: none for the input batch) / the rate of a 2048^3 product in the same run.
Bar (the personalised-models issue): forward+backward within 1.3x of the floor, 1 thread.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians, matmul_rate, table_main  # noqa: E402
from dselect_bench import mlp_flops  # noqa: E402
from models_table import CONFIGS  # noqa: E402

from mtlkernels import nn as mnn  # noqa: E402

TOWERS = (256, 128, 64)
PRIOR, DOMAIN = list(range(64)), list(range(64, 80))


def gate_nu(inp: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, width), nn.ReLU(), nn.Linear(width, width))


class ModulePerTower(nn.Module):
    """PEPNet written module by module: T towers of nn.Linear, a Gate NU per task and layer."""

    def __init__(self, d: int, tasks: int):
        super().__init__()
        self.prior, self.domain = PRIOR, DOMAIN
        self.epnet = gate_nu(len(DOMAIN) + d, d)
        widths = (d, *TOWERS)
        self.towers = nn.ModuleList(nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
                                    for _ in range(tasks))
        self.logits = nn.ModuleList(nn.Linear(TOWERS[-1], 1) for _ in range(tasks))
        self.gates = nn.ModuleList(nn.ModuleList(gate_nu(len(PRIOR) + d, w) for w in TOWERS) for _ in range(tasks))

    def forward(self, x):
        h = x * (2 * torch.sigmoid(self.epnet(torch.cat([x[:, self.domain], x.detach()], 1))))
        prior = torch.cat([x[:, self.prior], h.detach()], 1)
        out = []
        for layers, gates, logit in zip(self.towers, self.gates, self.logits):
            z = h
            for layer, gate in zip(layers, gates):
                z = torch.relu(layer(z)) * (2 * torch.sigmoid(gate(prior)))
            out.append(logit(z))
        return torch.cat(out, 1)


def run(reps: int, threads: int, allocator: str) -> None:
    torch.set_num_threads(threads)
    c = CONFIGS["census"]
    B, d, T = c["batch"], c["input_dim"], c["tasks"]
    rate = matmul_rate(torch.float32)
    print(f"PEPNet vs GEMM floor, torch {torch.__version__}, {threads} thread(s), {allocator}; "
          f"fp32 GEMM {rate / 1e9:.0f} GFLOP/s; batch {B}, {d} input columns, {T} tasks, towers {TOWERS}\n")
    towers = mlp_flops((d, *TOWERS, 1), B, T, False)  # their input h needs its gradient (EPNet)
    task_gates = sum(mlp_flops((len(PRIOR) + d, w, w), B, T, True) for w in TOWERS)
    epnet = mlp_flops((len(DOMAIN) + d, d, d), B, 1, True)
    floor = {"fwd+bwd": (towers + task_gates + epnet) / rate}
    forward = sum(2.0 * B * a * b * g for widths, g in [((d, *TOWERS, 1), T), ((len(DOMAIN) + d, d, d), 1)]
                  for a, b in zip(widths[:-1], widths[1:]))
    forward += sum(2.0 * B * T * ((len(PRIOR) + d) * w + w * w) for w in TOWERS)
    floor["forward"] = forward / rate
    torch.manual_seed(0)
    x = torch.randn(B, d)
    models = {"PEPNet (fused gates)": mnn.PEPNet(d, T, PRIOR, DOMAIN, TOWERS), "module per tower": ModulePerTower(d, T)}

    def step(model):
        def run_once():
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        return run_once

    def infer(model):
        def run_once():
            with torch.no_grad():
                model(x)
        return run_once

    fns = {**{(n, "fwd+bwd"): step(m) for n, m in models.items()}, **{(n, "forward"): infer(m) for n, m in models.items()}}
    t = interleaved_medians(fns, reps=reps)
    print("| model | pass | ms | GEMM floor ms | / floor |")
    print("|---|---|---|---|---|")
    for kind in ("forward", "fwd+bwd"):
        for name in models:
            print(f"| {name} | {kind} | {t[(name, kind)] * 1e3:.2f} | {floor[kind] * 1e3:.2f} | "
                  f"{t[(name, kind)] / floor[kind]:.2f} |")


if __name__ == "__main__":
    table_main(__doc__, run)
