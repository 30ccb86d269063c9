"""Prints median wall times of the evaluation metrics on CPU at 1 and 2 threads.

    python bench/metrics_bench.py [--rows 1000000] [--users 100000] [--reps 7] [--threads 1 2]

Data: random user ids drawn from a sparse id range, random binary labels with about 10%
positives, scores rounded to 3 decimals (so there are many ties, within users too).
Medians of interleaved runs (bench/_timing.py). Project target: uAUC over 1e6 rows and
1e5 users under 1 s at 1 thread.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the repository root, for an uninstalled checkout
from _timing import ensure_steady_malloc, interleaved_medians  # noqa: E402

from mtlkernels import metrics  # noqa: E402


def make_data(rows: int, users: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    id_pool = torch.randperm(50 * users, generator=g)[:users] * 13 + 7  # non-contiguous ids
    user = id_pool[torch.randint(0, users, (rows,), generator=g)]
    labels = (torch.rand(rows, generator=g) < 0.1).long()
    scores = ((torch.rand(rows, generator=g) + 0.4 * labels) / 1.4).round(decimals=3).float()
    return scores, labels, user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's defaults: large outputs are first-touched on every call")
    args = parser.parse_args()
    allocator = ensure_steady_malloc(args.system_malloc)

    scores, labels, users = make_data(args.rows, args.users)
    uauc = metrics.uauc(scores, labels, users)
    print(f"mtlkernels metrics, torch {torch.__version__}, {args.rows:,} rows, {args.users:,} user ids "
          f"({uauc.users_kept:,} kept, {uauc.users_dropped:,} single-class dropped), "
          f"{labels.float().mean():.1%} positives, {torch.unique(scores).numel():,} distinct scores")
    print(f"medians of {args.reps} interleaved runs; allocator: {allocator}\n")
    print(f"values: auc={float(metrics.auc(scores, labels)):.6f} uauc={float(uauc.value):.6f} "
          f"gauc(impressions)={float(metrics.gauc(scores, labels, users).value):.6f}\n")

    fns = {
        "auc": lambda: metrics.auc(scores, labels),
        "gauc (impressions)": lambda: metrics.gauc(scores, labels, users),
        "gauc (positives)": lambda: metrics.gauc(scores, labels, users, weighting="positives"),
        "uauc": lambda: metrics.uauc(scores, labels, users),
        "calibration (10 quantile buckets)":
            lambda: metrics.calibration(scores, labels, metrics.quantile_buckets(scores, 10)),
        "logloss (probs)": lambda: metrics.logloss(scores, labels),
    }
    print("| threads | metric | median ms |")
    print("|---|---|---|")
    for n in args.threads:
        torch.set_num_threads(n)
        times = interleaved_medians(fns, reps=args.reps, warmup=1)
        for name, t in times.items():
            print(f"| {n} | {name} | {t * 1e3:.1f} |")


if __name__ == "__main__":
    main()
