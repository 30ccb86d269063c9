"""Prints the grouped-expert comparison table: the fused ``grouped_mlp`` op against the two
ways the experts of an MoE layer are written elsewhere, side by side in one run:

- expert loop: one ``nn.Sequential(Linear, ReLU, ...)`` call per expert, outputs stacked
  (torch-rechub, DeepCTR-Torch, MTReclib);
- stock batched: the first layer as one ``addmm`` over all experts, deeper layers as
  ``baddbmm`` on the transposed ``[G, B, in]`` view, ReLU by autograd (what mtlkernels did
  before the fused op).

    python bench/grouped_mlp_table.py [--reps 15] [--threads 1] [--system-malloc]

All three produce the ``[B, G, out]`` expert outputs the gate mixture reads and hold the
same parameters. The GEMM floor is the matrix-product FLOPs (forward, weight gradients; the
input batch gets no gradient) over the rate of a 2048x2048 product measured in the same run.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians, matmul_rate, products_line, table_main  # noqa: E402

from mtlkernels.nn import GroupedMLP  # noqa: E402

CONFIGS = [
    # name, batch, input width, experts, hidden widths
    ("census experts", 1024, 512, 8, (256, 128)),
    ("many-small experts", 512, 256, 16, (64, 32)),
    ("many-small experts, serving", 128, 256, 16, (64, 32)),
]


class ExpertLoop(nn.Module):
    def __init__(self, in_features: int, experts: int, hidden: tuple[int, ...]):
        super().__init__()
        widths = [in_features, *hidden]
        self.experts = nn.ModuleList(
            nn.Sequential(*[m for i in range(len(hidden)) for m in (nn.Linear(widths[i], widths[i + 1]), nn.ReLU())])
            for _ in range(experts))

    def forward(self, x):
        return torch.stack([e(x) for e in self.experts], dim=1)


class StockBatched(nn.Module):
    """Parameters shared with a GroupedMLP; plain addmm/baddbmm and autograd ReLU."""

    def __init__(self, fused: GroupedMLP):
        super().__init__()
        self.fused = fused

    def forward(self, x):
        layers = self.fused.layers
        first = layers[0]
        G, out = first.groups, first.out_features
        h = torch.relu(torch.addmm(first.bias.reshape(-1), x, first.weight.reshape(first.in_features, G * out)))
        h = h.view(x.shape[0], G, out).transpose(0, 1)  # [G, B, out]
        for layer in layers[1:]:
            h = torch.relu(torch.baddbmm(layer.bias.unsqueeze(1), h, layer.weight))
        return h.transpose(0, 1)


def run(reps: int, threads: int, allocator: str) -> None:
    torch.set_num_threads(threads)
    rate = matmul_rate()
    print(f"grouped experts, torch {torch.__version__}, {threads} thread(s), medians of {reps} interleaved runs")
    print(f"allocator: {allocator}")
    print(f"fp32 matrix-product rate (2048^3, torch.mm): {rate / 1e9:.0f} GFLOP/s")
    print(products_line() + "\n")
    print("| experts | B | pass | expert loop ms | stock batched ms | grouped_mlp ms | vs loop | vs stock | "
          "GEMM floor ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, B, d, G, hidden in CONFIGS:
        torch.manual_seed(0)
        fused = GroupedMLP(G, d, hidden, shared_input=True)
        loop = ExpertLoop(d, G, hidden)
        stock = StockBatched(fused)
        x = torch.randn(B, d)
        widths = [d, *hidden]
        layer_flops = [2.0 * B * G * widths[i] * widths[i + 1] for i in range(len(hidden))]
        serving = "serving" in name
        flops = sum(layer_flops) if serving else sum(3 * f for f in layer_flops) - layer_flops[0]

        def step(model):
            if serving:
                with torch.no_grad():
                    return model(x)
            model(x).sum().backward()

        t = interleaved_medians({"loop": lambda: step(loop), "stock": lambda: step(stock),
                                 "fused": lambda: step(fused)}, reps=reps)
        print(f"| {name} | {B} | {'forward' if serving else 'forward+backward'} | {t['loop'] * 1e3:.2f} | "
              f"{t['stock'] * 1e3:.2f} | {t['fused'] * 1e3:.2f} | {t['loop'] / t['fused']:.2f}x | "
              f"{t['stock'] / t['fused']:.2f}x | {flops / rate * 1e3:.2f} |")
        for p in list(loop.parameters()) + list(fused.parameters()):
            p.grad = None


if __name__ == "__main__":
    table_main(__doc__, run)
