"""Does DSelect-k binarise? Trains DSelect-k (k = 2 of 8 experts) on the MMoE paper's synthetic
data (bench/reproduce.py's synthetic settings, task correlation 0.5) with static and per-example
gates at two entropy weights, and reads the scored model's gates on the test rows: per task the
experts with non-zero weight (static gates; for per-example gates the range over the rows) and
the share of selectors that are exactly one-hot.

    .venv/bin/python bench/dselect_binarise.py [--seed 0] [--epochs 30] [--threads 1]

Bar (the personalised-models issue): trained on this data, DSelect-k ends with exactly k non-zero
expert weights per task.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reproduce import SYNTHETIC, SYNTHETIC_MODEL  # noqa: E402

from mtlkernels.config import TrainConfig  # noqa: E402
from mtlkernels.train import Trainer  # noqa: E402

VARIANTS = (("static", 0.1), ("static", 1e-6), ("per-example", 1e-6), ("per-example", 0.1))
K = 2


@torch.no_grad()
def gate_report(trainer: Trainer) -> tuple[list[str], float]:
    """Per task, the experts with non-zero weight on the test rows; the share of one-hot selectors."""
    model = trainer.model.eval()
    test = trainer.data.splits["test"]
    q, r = model.model.gates(model.features(test.sparse, test.dense, test.bags))  # [B or 1, T, X], [., T, k, X]
    one_hot = ((r == 0) | (r == 1)).all(-1).double().mean().item()
    cells = []
    for t, name in enumerate(trainer.names):
        if q.shape[0] == 1:
            experts = (q[0, t] > 0).nonzero().flatten().tolist()
            weights = ", ".join(f"{e}: {q[0, t, e]:.3f}" for e in experts)
            cells.append(f"{name}: {len(experts)} ({weights})")
        else:
            nonzero = (q[:, t] > 0).sum(-1)  # [B]
            cells.append(f"{name}: {int(nonzero.min())}-{int(nonzero.max())} (rows with exactly {K}: "
                         f"{(nonzero == K).double().mean().item():.0%})")
    return cells, one_hot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=SYNTHETIC_MODEL["epochs"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    print(f"DSelect-k, k = {K} of {SYNTHETIC_MODEL['experts']} experts, synthetic data (correlation 0.5, "
          f"{SYNTHETIC['rows']} rows), up to {args.epochs} epochs, seed {args.seed}; gates on the test rows\n")
    print("| gates | entropy weight | epochs | experts with non-zero weight, per task | one-hot selectors |")
    print("|---|---|---|---|---|")
    for gates, weight in VARIANTS:
        cfg = TrainConfig.from_dict({"data": "synthetic", "data_options": {**SYNTHETIC, "correlation": 0.5},
                                     **SYNTHETIC_MODEL, "epochs": args.epochs, "model": "dselect-k", "dselect_k": K,
                                     "dselect_gates": gates, "dselect_entropy": weight, "seed": args.seed,
                                     "threads": args.threads, "progress": False})
        trainer = Trainer(cfg)
        m = trainer.fit()
        cells, one_hot = gate_report(trainer)
        print(f"| {gates} | {weight:g} | {len(m['epochs'])} | {'; '.join(cells)} | {one_hot:.0%} |", flush=True)


if __name__ == "__main__":
    main()
