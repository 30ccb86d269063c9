"""A gradient method's step on a model with a large embedding table: peak memory and time
against an EW step (issue: embedding tables without dense per-task copies).

The model: one field of ``--rows`` ids (default 1e6) and seven fields of 100, 32-dim embeddings,
an MMoE (8 experts of [256, 128], towers of [64]), T = 4 tasks, batch 1024, Adam. Peak memory is
the process's maximum resident set, each method in a fresh process (the first step included);
the step (forward, ``method.backward``, ``optimizer.step``) is timed interleaved in one process,
medians. Bar: PCGrad and MGDA at most 100 MB above EW, their step at most 1.1 x (1 + 2T) / 3 x
EW's (the FLOP model of one forward, T backward passes to the shared trunk and one more).

    python bench/embedding_step_bench.py [--rows 1000000] [--threads 1] [--reps 15] [--dense]

``--dense`` passes the shared parameters as a list (no lookups: the dense ``[T, rows, 32]``
per-task blocks, as before the compact path), for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians  # noqa: E402

from mtlkernels import balance  # noqa: E402
from mtlkernels import nn as mnn  # noqa: E402
from mtlkernels.balance.base import shared_list  # noqa: E402

T, B, E = 4, 1024, 32
METHODS = {"EW": balance.EW, "PCGrad": balance.PCGrad, "MGDA": balance.MGDA, "GradVac": balance.GradVac}


def build(rows: int):
    torch.manual_seed(0)
    fields = (mnn.SparseField("big", rows), *(mnn.SparseField(f"small{k}", 100) for k in range(7)))
    schema = mnn.FeatureSchema(sparse=fields, embedding_dim=E)
    model = mnn.WithFeatures(mnn.FeatureEmbedding(schema), mnn.MMoE(schema.output_dim, T, 8, (256, 128), (64,)))
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, f.vocab_size, (B,), generator=g) for f in fields], 1)
    labels = torch.randint(0, 2, (B, T), generator=g).float()
    return model, ids, labels


def make_step(model, ids, labels, method, dense: bool):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    shared = shared_list(model) if dense else model

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(ids)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
        method.backward(losses, shared)
        method.check_finite()
        opt.step()
    return step


def peak_mb(name: str, rows: int, dense: bool) -> float:
    """One method in this (fresh) process: the peak resident set after 3 steps, MB."""
    model, ids, labels = build(rows)
    step = make_step(model, ids, labels, METHODS[name](), dense)
    for _ in range(3):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--dense", action="store_true")
    p.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        print(json.dumps(peak_mb(args.peak_of, args.rows, args.dense)))
        return
    peaks = {}
    for name in METHODS:
        cmd = [sys.executable, __file__, "--rows", str(args.rows), "--threads", str(args.threads), "--peak-of", name]
        out = subprocess.run(cmd + (["--dense"] if args.dense else []), check=True, capture_output=True, text=True)
        peaks[name] = float(out.stdout.strip().splitlines()[-1])
    model, ids, labels = build(args.rows)
    steps = {name: make_step(model, ids, labels, make(), args.dense) for name, make in METHODS.items()}
    times = interleaved_medians(steps, reps=args.reps)
    bound = 1.1 * (1 + 2 * T) / 3
    print(f"\n## Step with a {args.rows:,} x {E} table, MMoE, T = {T}, batch {B}, {args.threads} thread(s)"
          f"{', dense per-task blocks' if args.dense else ''}\n")
    print(f"| method | peak MB | peak - EW (bar <= 100) | step ms | step / EW (bar <= {bound:.2f}) |")
    print("|---|---|---|---|---|")
    for name in METHODS:
        print(f"| {name} | {peaks[name]:.0f} | {peaks[name] - peaks['EW']:+.0f} | {times[name] * 1e3:.2f} | "
              f"{times[name] / times['EW']:.2f} |")


if __name__ == "__main__":
    main()
