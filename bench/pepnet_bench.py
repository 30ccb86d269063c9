"""PEPNet forward and forward+backward against its GEMM floor and against a module-per-tower
version (one nn.Linear per task and layer, each Gate NU its own nn.Sequential, the gates applied
as separate elementwise passes: the TorchEasyRec arrangement), at the Census size of
bench/models_table.py (batch 1024, 512 input columns, 2 tasks) and its many-small size (batch 512,
256 columns, 6 tasks), fp32.

    python bench/pepnet_bench.py [--reps 15] [--threads 1] [--system-malloc]

PEPNet here: towers 256 -> 128 -> 64 -> 1 (many-small: 64 -> 32 -> 16 -> 1), every hidden layer gated, 4 gate fields (64
columns), 1 domain field (EPNet over the 512 columns), Gate NU hidden width = the gated width.
GEMM floor = the matrix-product FLOPs (forward, weight gradients, and the input gradients that
autograd needs: none for the input batch) / the rate of a 2048^3 product in the same run.
Bar (the personalised-models issue): forward+backward within 1.3x of the floor, 1 thread. Also
timed: the same grouped model with the gates as separate elementwise passes, and MMoE at the
Census size against its own floor (what this machine's GEMMs reach at these shapes).
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
from mtlkernels.nn.pepnet import prior_input  # noqa: E402

PRIOR, DOMAIN = list(range(64)), list(range(64, 80))  # 4 gate fields, 1 domain field of 16 columns


def gate_nu(inp: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, width), nn.ReLU(), nn.Linear(width, width))


class ModulePerTower(nn.Module):
    """PEPNet written module by module: T towers of nn.Linear, a Gate NU per task and layer."""

    def __init__(self, d: int, tasks: int, towers: tuple[int, ...]):
        super().__init__()
        self.prior, self.domain = PRIOR, DOMAIN
        self.epnet = gate_nu(len(DOMAIN) + d, d)
        widths = (d, *towers)
        self.towers = nn.ModuleList(nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
                                    for _ in range(tasks))
        self.logits = nn.ModuleList(nn.Linear(towers[-1], 1) for _ in range(tasks))
        self.gates = nn.ModuleList(nn.ModuleList(gate_nu(len(PRIOR) + d, w) for w in towers) for _ in range(tasks))

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


class SeparateGatePasses(mnn.PEPNet):
    """The same grouped model with the tower gates applied as elementwise passes after each
    layer's op call (what the fused epilogue replaces)."""

    def forward(self, x):
        (u,) = self.epnet(prior_input(x, self.domain_columns, x))
        h = x * (2 * torch.sigmoid(u[:, 0]))
        gates = self.task_gates(prior_input(x, self.prior_columns, h))
        layers = self.towers.mlp.layers
        z = h
        for i, layer in enumerate(layers):
            z = layer(z, relu=i < len(layers) - 1)
            if i < len(layers) - 1:
                z = z * (2 * torch.sigmoid(gates[i]))
        return z.squeeze(-1)


#: PEPNet's towers per size (the rest of each size from models_table.CONFIGS)
TOWER_SIZES = {"census": (256, 128, 64), "many-small": (64, 32, 16)}


def floors(B: int, stacks) -> dict[str, float]:
    """Forward and forward+backward GEMM FLOPs of ``stacks``: (widths, groups, reads_input) per
    grouped MLP (reads_input: its first layer needs no input gradient)."""
    fwd = sum(2.0 * B * a * b * g for widths, g, _ in stacks for a, b in zip(widths[:-1], widths[1:]))
    return {"forward": fwd, "fwd+bwd": sum(mlp_flops(w, B, g, r) for w, g, r in stacks)}


def run_size(size: str, reps: int, rate: float) -> None:
    c = CONFIGS[size]
    B, d, T, towers = c["batch"], c["input_dim"], c["tasks"], TOWER_SIZES[size]
    P, D = len(PRIOR), len(DOMAIN)
    pepnet = floors(B, [((d, *towers, 1), T, False)]  # the towers' input h needs its gradient (EPNet)
                    + [((P + d, w, w), T, True) for w in towers] + [((D + d, d, d), 1, True)])
    mmoe = floors(B, [((d, *c["expert_hidden"]), c["experts"], True),
                      ((c["expert_hidden"][-1], *c["tower_hidden"], 1), T, False), ((d, c["experts"]), T, True)])
    torch.manual_seed(0)
    x = torch.randn(B, d)
    mmoe_name = f"MMoE ({c['experts']} experts {c['expert_hidden']}, towers {c['tower_hidden']}), no gates"
    models = {"PEPNet (fused gates)": (mnn.PEPNet(d, T, PRIOR, DOMAIN, towers), pepnet),
              "PEPNet, gates as separate passes": (SeparateGatePasses(d, T, PRIOR, DOMAIN, towers), pepnet),
              "module per tower": (ModulePerTower(d, T, towers), pepnet),
              mmoe_name: (mnn.MMoE(d, T, c["experts"], c["expert_hidden"], c["tower_hidden"]), mmoe)}

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

    fns = {**{(n, "fwd+bwd"): step(m) for n, (m, _) in models.items()},
           **{(n, "forward"): infer(m) for n, (m, _) in models.items()}}
    t = interleaved_medians(fns, reps=reps)
    print(f"\n{size}: batch {B}, {d} input columns, {T} tasks, PEPNet towers {towers}\n")
    print("| model | pass | ms | GEMM floor ms | / floor |")
    print("|---|---|---|---|---|")
    for kind in ("forward", "fwd+bwd"):
        for name, (_, flops) in models.items():
            f = flops[kind] / rate
            print(f"| {name} | {kind} | {t[(name, kind)] * 1e3:.2f} | {f * 1e3:.2f} | {t[(name, kind)] / f:.2f} |")


def run(reps: int, threads: int, allocator: str) -> None:
    torch.set_num_threads(threads)
    rate = matmul_rate(torch.float32)
    print(f"PEPNet vs GEMM floor, torch {torch.__version__}, {threads} thread(s), {allocator}; "
          f"fp32 GEMM {rate / 1e9:.0f} GFLOP/s")
    for size in TOWER_SIZES:
        run_size(size, reps, rate)


if __name__ == "__main__":
    table_main(__doc__, run)
