"""The README's reproduction tables: trains each run of a suite for several seeds (skipping
runs already finished in the output directory, so it can be stopped and started again) and
prints mean +- std over the seeds of each task's test AUC (uAUC where the data has users, MSE
for regression tasks).

    .venv/bin/python bench/reproduce.py SUITE [--seeds 0,1,2] [--only REGEX] [--out runs/reproduce] [--threads 2]
                                              [--by FIELD] [--ema-decay 0]

Suites: census-models (Census groups 1 and 2: Shared-Bottom, OMoE, MMoE, CGC, PLE, DSelect-k, PEPNet,
AITM under EW), census-methods (group 1 MMoE under every balancing method), single-task (one model per
Census task), synthetic (MMoE vs OMoE vs Shared-Bottom as the MMoE paper's task correlation
falls), recsys (the recsys generator, MMoE and PLE, EW and PCGrad), heavy-users (the recsys generator,
MMoE against PEPNet with the heavy-user flag as EPNet's domain field and user, item and category
as PPNet's gate fields; with ``--by heavy`` also the scores of the heavy users and of the others).
Every run uses the CLI's defaults except what the suite names. ``--by FIELD`` re-scores each
run's best model per value of that sparse field (``mtlkernels evaluate --by``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics

from mtlkernels.config import TrainConfig
from mtlkernels.scoring import evaluate_run
from mtlkernels.train import Trainer

MODELS = ("shared-bottom", "omoe", "mmoe", "cgc", "ple", "dselect-k", "pepnet", "aitm")
METHODS = ("ew", "uw", "gradnorm", "dwa", "rlw", "mgda", "mgda-ub", "pe-ltr", "pcgrad", "gradvac", "imtl-g",
           "aligned-mtl", "upgrad", "dualproj", "cagrad", "nash-mtl", "famo")
SYNTHETIC = {"rows": 30_000}
#: the MMoE paper's small networks on the raw inputs (no piecewise-linear encoding)
SYNTHETIC_MODEL = {"expert_hidden": [16], "tower_hidden": [8], "experts": 8, "bottom_hidden": [64],
                   "epochs": 30, "batch_size": 256, "patience": 5, "dense_bins": 0}


def suite(name: str) -> list[tuple[str, dict]]:
    """(row label, settings) of every run of a suite, for one seed."""
    if name == "census-models":
        return [(f"{d} {m}", {"data": d, "model": m}) for d in ("census", "census2") for m in MODELS]
    if name == "census-methods":
        return [(f"census mmoe {m}", {"data": "census", "method": m}) for m in METHODS]
    if name == "single-task":
        return [(f"{d} {t} alone", {"data": d, "tasks": [t]})
                for d, t in (("census", "income"), ("census", "never_married"), ("census2", "education"))]
    if name == "synthetic":
        return [(f"p={p} {m}", {"data": "synthetic", "data_options": {**SYNTHETIC, "correlation": p}, "model": m,
                                **SYNTHETIC_MODEL})
                for p in (1.0, 0.9, 0.5, 0.0) for m in ("shared-bottom", "omoe", "mmoe")]
    if name == "recsys":
        return [(f"recsys {m} {meth}", {"data": "recsys", "model": m, "method": meth})
                for m in ("mmoe", "ple") for meth in ("ew", "pcgrad")]
    if name == "heavy-users":
        return [("recsys mmoe", {"data": "recsys"}),
                ("recsys pepnet", {"data": "recsys", "model": "pepnet", "domain_fields": ["heavy"],
                                   "gate_fields": ["user_id", "item_id", "category"]})]
    raise SystemExit(f"unknown suite {name!r}")


def run_dir(out: str, settings: dict, seed: int) -> str:
    """The run's directory, named by the settings that differ from the defaults, so that one
    run shared by two suites (MMoE under EW) trains once."""
    default = TrainConfig().to_dict()
    resolved = TrainConfig.from_dict(settings).to_dict()
    parts = []
    for k in sorted(resolved):
        v = resolved[k]
        if v == default[k]:
            continue
        if isinstance(v, dict):
            v = ",".join(f"{a}-{b}" for a, b in sorted(v.items()))
        elif isinstance(v, list):
            v = ",".join(map(str, v))
        parts.append(f"{k}-{v}")
    return os.path.join(out, "_".join(parts or ["defaults"]) + f"_s{seed}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=None, help="run only the rows whose label matches this regular expression")
    p.add_argument("--by", default=None, metavar="FIELD", help="also score each value of this sparse field apart")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="the runs' weight-average decay (default: the CLI's; 0: score the last weights)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for label, settings in suite(args.suite):
        if args.only and not re.search(args.only, label):
            continue
        if args.ema_decay is not None:
            settings = {**settings, "ema_decay": args.ema_decay}
        results = []
        for seed in seeds:
            d = run_dir(args.out, settings, seed)
            path = os.path.join(d, "metrics.json")
            m = json.load(open(path)) if os.path.exists(path) else None
            if m is None or m.get("final") is None:
                if os.path.exists(os.path.join(d, "checkpoints", "last.pt")):
                    m = Trainer.resume(d, progress=False).fit()
                else:
                    cfg = TrainConfig.from_dict({**settings, "seed": seed, "threads": args.threads, "progress": False})
                    m = Trainer(cfg, run_dir=d).fit()
            if args.by:
                m = {**m, "segments": evaluate_run(d, by=args.by)["segments"]}
            results.append(m)
            print(f"  done {label} seed {seed}: best epoch {m['best']['epoch']}", flush=True)
        rows.append((label, results))
        if args.by:
            for value in results[0]["segments"]:
                rows.append((f"{label} {args.by}={value}",
                             [{**r, "final": {"test": r["segments"][value]["metrics"]}} for r in results]))
    print(f"\n{args.suite}: test scores, mean +- std over seeds {seeds}")
    for label, results in rows:
        cells = []
        for t in results[0]["tasks"]:
            scores = [r["final"]["test"][t] for r in results]
            key = "mse" if "mse" in scores[0] else "auc"
            vals = [s[key] for s in scores]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cell = f"{t} {key} {statistics.mean(vals):.4f} +- {sd:.4f}"
            if "uauc" in scores[0]:
                cell += f" (uAUC {statistics.mean(s['uauc'] for s in scores):.4f})"
            cells.append(cell)
        epochs = statistics.mean(len(r["epochs"]) for r in results)
        print(f"  {label:<28} " + " | ".join(cells) + f" | {epochs:.1f} epochs")


if __name__ == "__main__":
    main()
