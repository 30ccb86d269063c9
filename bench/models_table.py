"""Prints the model comparison table: mtlkernels' grouped/fused MMoE and PLE against the
expert-loop versions the popular libraries ship (one module call per expert and gate), same
parameters, side by side in one run, with the GEMM floor next to each figure.

    python bench/models_table.py [--reps 15] [--threads 1] [--system-malloc]

GEMM floor = the model's matrix-product FLOPs (forward, weight gradients, and input gradients
except for the input batch) / the matrix-product rate of a 2048x2048 product measured in
the same run (fp32, or bf16 for the autocast rows).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians, matmul_rate, products_line, table_main  # noqa: E402

from mtlkernels.nn.swap import mmoe_from, ple_from  # noqa: E402
from mtlkernels.reference.expert_loop import LoopMMoE, LoopPLE  # noqa: E402

CONFIGS = {
    # name: batch, input_dim, tasks, experts (MMoE), expert_hidden, tower_hidden, PLE (task_experts, shared)
    "census": dict(batch=1024, input_dim=512, tasks=2, experts=8, expert_hidden=(256, 128), tower_hidden=(64,),
                   ple=(2, 4)),
    "many-small": dict(batch=512, input_dim=256, tasks=6, experts=16, expert_hidden=(64, 32), tower_hidden=(16,),
                       ple=(2, 4)),
}


def linear_flops(model: torch.nn.Module, batch: int, input_dim: int) -> float:
    """Forward + weight-gradient + input-gradient FLOPs of every Linear, skipping the input
    gradient of layers that read the input batch."""
    total = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            f = 2.0 * batch * m.in_features * m.out_features
            total += 3 * f if m.in_features != input_dim else 2 * f
    return total


def build(kind: str, cfg: dict):
    torch.manual_seed(0)
    if kind == "MMoE":
        loop = LoopMMoE(cfg["input_dim"], cfg["tasks"], cfg["experts"], cfg["expert_hidden"], cfg["tower_hidden"])
        return loop, mmoe_from(loop.experts, loop.gates, loop.towers)
    own, shared = cfg["ple"]
    loop = LoopPLE(cfg["input_dim"], cfg["tasks"], [own] * cfg["tasks"], shared, cfg["expert_hidden"],
                   cfg["tower_hidden"], num_levels=2)
    return loop, ple_from([lvl.as_swap_spec() for lvl in loop.levels], loop.towers)


def run(reps: int, threads: int, allocator: str) -> None:
    torch.set_num_threads(threads)
    rate32, rate16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    print(f"mtlkernels models, torch {torch.__version__}, {threads} thread(s), medians of {reps} interleaved runs")
    print(f"allocator: {allocator}")
    print(f"matrix-product rate (2048^3, torch.mm): fp32 {rate32 / 1e9:.0f} GFLOP/s, bf16 {rate16 / 1e9:.0f} GFLOP/s")
    print(products_line() + "\n")
    print("| model | config | pass | precision | expert loop ms | mtlkernels ms | speed-up | GEMM floor ms | "
          "mtlkernels / floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cfg_name, cfg in CONFIGS.items():
        for kind in ("MMoE", "PLE"):
            loop, fast = build(kind, cfg)
            for pass_, batch in (("forward+backward", cfg["batch"]), ("serving forward", 128)):
                x = torch.randn(batch, cfg["input_dim"])
                flops = linear_flops(loop, batch, cfg["input_dim"])
                if pass_ == "serving forward":
                    flops = sum(2.0 * batch * m.in_features * m.out_features
                                for m in loop.modules() if isinstance(m, torch.nn.Linear))
                for precision in ("fp32", "bf16 autocast"):
                    if pass_ == "serving forward" and precision != "fp32":
                        continue
                    autocast = precision != "fp32"

                    def step(model, autocast=autocast, pass_=pass_, x=x):
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                            if pass_ == "serving forward":
                                with torch.no_grad():
                                    return model(x)
                            out = model(x)
                        out.float().sum().backward()

                    t = interleaved_medians({"loop": lambda: step(loop), "fast": lambda: step(fast)}, reps=reps)
                    floor = flops / (rate16 if autocast else rate32)
                    loop_fp32 = ""
                    if autocast:
                        t32 = interleaved_medians({"loop32": lambda: step(loop, autocast=False)}, reps=reps)["loop32"]
                        loop_fp32 = f" ({t32 / t['fast']:.2f}x vs fp32 loop)"
                    print(f"| {kind} | {cfg_name} B{batch} | {pass_} | {precision} | {t['loop'] * 1e3:.2f} | "
                          f"{t['fast'] * 1e3:.2f} | {t['loop'] / t['fast']:.2f}x{loop_fp32} | {floor * 1e3:.2f} | "
                          f"{t['fast'] / floor:.2f} |")
            for p in list(loop.parameters()) + list(fast.parameters()):
                p.grad = None


if __name__ == "__main__":
    table_main(__doc__, run)
