"""Prints the balancing benchmarks: (1) aggregation alone (Gram + T x T solver + combine into
.grad) on random per-task gradients, native vs reference, next to the two-pass bandwidth
floor; (2) the T x T solvers alone; (3) a whole training step of an MMoE-sized model per
method, as a ratio to an EW step.

    python bench/balance_table.py [--P 1e5 1e6 1e7] [--T 2 4 8 16] [--reps 5] [--threads 1]

Two-pass floor = 2 * T * P * 4 bytes / the read bandwidth of a P-sized reduction measured in
the same run (read J once for G, once for the combine). 1 thread by default.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import ensure_steady_malloc, interleaved_medians  # noqa: E402

from mtlkernels import balance  # noqa: E402
from mtlkernels import nn as mnn  # noqa: E402
from mtlkernels.ops import combine_, gram  # noqa: E402

METHODS = {"PCGrad": lambda: balance.PCGrad(), "GradVac": lambda: balance.GradVac(), "MGDA": lambda: balance.MGDA(),
           "IMTL-G": lambda: balance.IMTLG(), "Aligned-MTL": lambda: balance.AlignedMTL(),
           "UPGrad": lambda: balance.UPGrad(), "DualProj": lambda: balance.DualProj(),
           "CAGrad": lambda: balance.CAGrad(), "Nash-MTL": lambda: balance.NashMTL()}


def with_backend(name: str | None):
    if name is None:
        os.environ.pop("MTLK_BACKEND", None)
    else:
        os.environ["MTLK_BACKEND"] = name


def read_bandwidth(P: int, T: int) -> float:
    J = torch.randn(T, P)
    t = interleaved_medians({"sum": lambda: J.sum()}, reps=5)["sum"]
    return T * P * 4 / t


def aggregation_table(Ps, Ts, reps):
    print("\n## Aggregation alone: gram + solver + combine into .grad (ms, median)\n")
    print("Fresh .grad: written once into new memory (zero_grad(set_to_none=True), PyTorch's default);")
    print("accumulate: added onto an existing .grad (read + write of P more floats).\n")
    print("| P | T | method | native, fresh .grad | native, accumulate | reference, fresh | speed-up | "
          "2-pass floor | native fresh / floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for P in Ps:
        for T in Ts:
            torch.manual_seed(0)
            blocks = [torch.randn(T, P // 4) for _ in range(3)] + [torch.randn(T, P - 3 * (P // 4))]
            grads = [torch.zeros(b.shape[1:]) for b in blocks]
            floor = 2 * T * P * 4 / read_bandwidth(P, T)
            losses = torch.ones(T)
            for name, make in METHODS.items():
                method = make()

                def step(method=method, fresh=True):
                    G = gram(blocks)
                    w = method.gram_weights(G, losses)
                    out = [torch.empty_like(g) for g in grads] if fresh else grads
                    combine_(blocks, w.float(), out, accumulate=not fresh)

                times = {}
                for backend in ("native", "reference"):
                    with_backend(backend)
                    times[backend] = interleaved_medians({"s": step}, reps=reps, warmup=1)["s"]
                with_backend("native")
                acc = interleaved_medians({"s": lambda: step(fresh=False)}, reps=reps, warmup=1)["s"]
                with_backend(None)
                print(f"| {P:.0e} | {T} | {name} | {times['native'] * 1e3:.2f} | {acc * 1e3:.2f} | "
                      f"{times['reference'] * 1e3:.2f} | {times['reference'] / times['native']:.1f}x | "
                      f"{floor * 1e3:.2f} | {times['native'] / floor:.2f} |")


def solver_table(Ts, reps):
    from mtlkernels.ops import solvers

    print("\n## T x T solvers alone (us per call, N = 1, median)\n")
    names = ("pcgrad", "gradvac", "mgda", "min_norm", "peltr", "cagrad", "dual_cone (UPGrad, T problems)")
    print("| T | pcgrad | gradvac | mgda (Frank-Wolfe) | min_norm (exact) | peltr | cagrad | dual_cone (UPGrad) |")
    print("|---|---|---|---|---|---|---|---|")
    for T in Ts:
        J = torch.randn(T, 64, dtype=torch.float64)
        G = J @ J.T
        order = torch.stack([torch.randperm(T) for _ in range(T)])
        target = torch.zeros(T, T, dtype=torch.float64)
        c = torch.zeros(T, dtype=torch.float64)
        Greg = G / G.trace() + 1e-4 * torch.eye(T, dtype=torch.float64)
        U = torch.eye(T, dtype=torch.float64) / T
        t = interleaved_medians({
            "pcgrad": lambda: solvers.pcgrad_weights(G, order),
            "gradvac": lambda: solvers.gradvac_weights(G, order, target, 0.5),
            "mgda": lambda: solvers.mgda_weights(G),
            "min_norm": lambda: solvers.min_norm_weights(G),
            "peltr": lambda: solvers.peltr_weights(G, c),
            "cagrad": lambda: solvers.cagrad_weights(G, 0.5),
            "dual_cone (UPGrad, T problems)": lambda: solvers.dual_cone_weights(Greg, U),
        }, reps=max(reps * 40, 200))
        print(f"| {T} | " + " | ".join(f"{t[k] * 1e6:.1f}" for k in names) + " |")


def step_table(reps):
    print("\n## Whole step, MMoE (512 inputs, 8 experts [256, 128], 4 tasks [64]), batch 1024 (ms, median)\n")
    torch.manual_seed(0)
    model = mnn.MMoE(512, 4, 8, (256, 128), (64,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(1024, 512)
    y = (torch.rand(1024, 4) < 0.3).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def make_step(method, representation):
        def step():
            opt.zero_grad(set_to_none=True)
            if representation:
                logits, rep = model(x, return_representation=True)
                losses = bce(logits, y, reduction="none").mean(0)
                method.backward(losses, model, representation=rep)
            else:
                losses = bce(model(x), y, reduction="none").mean(0)
                method.backward(losses, model)
            opt.step()
        return step

    def make_famo_step(method):
        def step():
            opt.zero_grad(set_to_none=True)
            losses = bce(model(x), y, reduction="none").mean(0)
            method.backward(losses, model)
            opt.step()
            with torch.no_grad():
                method.after_step(bce(model(x), y, reduction="none").mean(0))
        return step

    steps = {"EW": make_step(balance.EW(), False), "PCGrad": make_step(balance.PCGrad(), False),
             "MGDA": make_step(balance.MGDA(), False), "UPGrad": make_step(balance.UPGrad(), False),
             "CAGrad": make_step(balance.CAGrad(), False), "Nash-MTL": make_step(balance.NashMTL(), False),
             "FAMO (+ its extra forward)": make_famo_step(balance.FAMO(4)),
             "MGDA-UB (representation)": make_step(balance.MGDA(), True),
             "PCGrad (representation)": make_step(balance.PCGrad(), True)}
    t = interleaved_medians(steps, reps=reps, warmup=1)
    print("| method | ms | / EW |")
    print("|---|---|---|")
    for name, v in t.items():
        print(f"| {name} | {v * 1e3:.1f} | {v / t['EW']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--P", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--T", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--system-malloc", action="store_true")
    args = parser.parse_args()
    allocator = ensure_steady_malloc(args.system_malloc)
    torch.set_num_threads(args.threads)
    print(f"mtlkernels balancing, torch {torch.__version__}, {args.threads} thread(s); allocator: {allocator}")
    aggregation_table([int(p) for p in args.P], args.T, args.reps)
    solver_table(args.T, args.reps)
    step_table(args.reps)


if __name__ == "__main__":
    main()
