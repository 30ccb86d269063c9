"""The ``mtlkernels`` command line.

    mtlkernels train      train a multi-task model (Census by default) into a run directory
    mtlkernels evaluate   re-score a run's saved model on a split or on another file
    mtlkernels compare    print runs side by side
    mtlkernels info       how this installation was built (backends, ISA, threads)
    mtlkernels demo       swap an expert-loop MMoE for the grouped/gate_mix one; check it is exact; time both

Every bad flag, setting or data file ends with one ``mtlkernels CMD: error: ...`` line and exit
status 2; an interrupted ``train`` (Ctrl-C) exits 130 after writing its checkpoint and report.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import mtlkernels
from mtlkernels.build import METHODS, MODELS, ConfigError, TrainingError
from mtlkernels.data import DataError


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    return parse


positive_int, nonnegative_int = int_at_least(1), int_at_least(0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def width_list(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths like 256,128, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected widths >= 1 like 256,128, got {text!r}")
    return widths


def name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated field names like user_id,item_id, got {text!r}")
    return names


def _cmd_info(args) -> int:
    print(json.dumps(mtlkernels.build_info(), indent=2))
    return 0


def _cmd_demo(args) -> int:
    from mtlkernels.demo import run_demo

    info = mtlkernels.build_info()
    print(f"mtlkernels {info['version']} | native kernels: {info['native']} ({info['cpu_isa']}) | "
          f"torch {info['torch']}")
    if not info["native"]:
        print(f"note: {info['load_error']}")
    r = run_demo(batch=args.batch, num_experts=args.experts, num_tasks=args.tasks, expert_dim=args.expert_dim,
                 in_features=args.in_features, reps=args.reps, threads=args.threads)
    s = r["shape"]
    print(f"MMoE: batch {s['batch']}, {s['in_features']} inputs, {s['experts']} experts of width "
          f"{s['expert_dim']}, {s['tasks']} tasks, {s['threads']} thread(s), forward+backward, "
          f"median of {args.reps}")
    print(f"  swap is exact: max |output diff| {r['max_abs_diff_output']:.2e}, "
          f"max |grad diff| {r['max_abs_diff_grads']:.2e}")
    print(f"  gate mixture alone : per-task broadcast loop {r['mixture_loop_ms']:8.3f} ms | gate_mix "
          f"{r['mixture_kernel_ms']:8.3f} ms | {r['mixture_loop_ms'] / r['mixture_kernel_ms']:.2f}x")
    print(f"  whole layer+towers : expert loop {r['layer_loop_ms']:8.3f} ms | swapped  {r['layer_swapped_ms']:8.3f} ms "
          f"| {r['layer_loop_ms'] / r['layer_swapped_ms']:.2f}x  (grouped experts + gate_mix, same weights)")
    ok = r["max_abs_diff_output"] < 1e-4 and r["max_abs_diff_grads"] < 1e-3
    return 0 if ok else 1


#: train flags that map one-to-one onto TrainConfig fields
TRAIN_FLAGS = {
    "data": (str, "census | census2 | synthetic | recsys | PATH to a CSV/Parquet file (schema in --config [data])"),
    "model": (str, f"one of {', '.join(MODELS)}"),
    "method": (str, f"one of {', '.join(METHODS)}"),
    "epochs": (positive_int, "maximum epochs"),
    "batch_size": (positive_int, "training batch size"),
    "lr": (positive_float, "learning rate"),
    "weight_decay": (float, "weight decay"),
    "optimizer": (str, "adam | adamw | sgd"),
    "ema_decay": (float, "score and save the EMA of the weights, this decay per step (default 0.998; 0: the last "
                         "weights)"),
    "seed": (nonnegative_int, "seed of initialisation, batch order and method randomness"),
    "threads": (positive_int, "torch CPU threads (default: all cores)"),
    "patience": (nonnegative_int, "epochs without a better validation score before stopping"),
    "monitor": (str, "early-stopping score: mean_auc | mean_loss | a task name"),
    "embedding_dim": (positive_int, "embedding width"),
    "dense_bins": (nonnegative_int, "piecewise-linear quantile bins per dense column (0: none)"),
    "experts": (positive_int, "experts (MMoE, OMoE, DSelect-k)"),
    "dselect_k": (positive_int, "experts each DSelect-k gate selects (default 2)"),
    "dselect_gates": (str, "DSelect-k gates: per-example (default) | static (one selection per task)"),
    "dselect_entropy": (float, "weight of DSelect-k's entropy regulariser (default 1e-6; 0.1 binarises static gates)"),
    "gate_fields": (name_list, "PPNet gate fields, e.g. user_id,item_id (pepnet: default every sparse/bag field; "
                               "mmoe: gates its experts)"),
    "domain_fields": (name_list, "EPNet domain fields of pepnet, e.g. heavy (default: none, no EPNet)"),
    "gate_hidden": (nonnegative_int, "hidden width of every Gate NU (default 0: the gated layer's width)"),
    "expert_hidden": (width_list, "expert widths, e.g. 256,128"),
    "tower_hidden": (width_list, "tower widths, e.g. 64"),
    "bottom_hidden": (width_list, "shared-bottom / entire-space tower widths (pepnet: its towers' first layers)"),
    "dropout": (float, "dropout rate"),
    "diagnostics_every": (nonnegative_int, "steps between task-gradient cosine samples (0: never)"),
}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    for name, (kind, help_) in TRAIN_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=help_)
    p.add_argument("--tasks", default=None, help="comma-separated tasks to train (single-task baselines)")
    p.add_argument("--config", default=None, help="a TOML file of settings (flags override it)")
    p.add_argument("--out", default=None, help="run directory (default: runs/DATA-MODEL-METHOD-sSEED)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_config(args):
    from mtlkernels.config import TrainConfig, load_toml

    settings = load_toml(args.config) if args.config else {}
    for name in TRAIN_FLAGS:
        v = getattr(args, name)
        if v is not None:
            settings[name] = v
    if args.tasks is not None:
        settings["tasks"] = [t.strip() for t in args.tasks.split(",")]
        if not all(settings["tasks"]):
            raise ConfigError(f"--tasks must be comma-separated task names, got {args.tasks!r}")
    if args.no_progress:
        settings["progress"] = False
    return TrainConfig.from_dict(settings)


def _default_out(config) -> str:
    data = os.path.splitext(os.path.basename(config.data))[0]
    tasks = "-" + "+".join(config.tasks) if config.tasks else ""
    base = os.path.join("runs", f"{data}{tasks}-{config.model}-{config.method}-s{config.seed}")
    out, k = base, 2
    while os.path.exists(out):
        out, k = f"{base}-{k}", k + 1
    return out


def _table(title: str, m: dict, tasks: list[str]) -> list[str]:
    cols = ["auc", "uauc", "gauc", "logloss", "calibration", "mse", "positives", "rows"]
    cols = [c for c in cols if any(c in m.get(t, {}) for t in tasks)]
    lines = [title, "  " + f"{'task':<16}" + "".join(f"{c:>12}" for c in cols)]
    for t in tasks:
        row = m.get(t, {})
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append(f"{'':>12}" if v is None else f"{v:>12,d}" if isinstance(v, int) else f"{v:>12.4f}")
        lines.append("  " + f"{t:<16}" + "".join(cells))
    return lines


def _report(m: dict) -> None:
    final = m.get("final")
    if final:
        best = m["best"]
        print(f"best epoch {best['epoch']} ({m['monitor']} {best['value']:.4f} on validation)")
        for split in ("valid", "test"):
            print("\n".join(_table(f"{split}:", final[split], m["tasks"])))
    elif m["epochs"]:
        e = m["epochs"][-1]
        print("\n".join(_table(f"validation after epoch {e['epoch']} (interrupted: no test score yet):",
                               e["valid"], m["tasks"])))


def _cmd_train(args) -> int:
    from mtlkernels.train import Trainer

    if args.resume:
        if args.config or any(getattr(args, n) is not None for n in TRAIN_FLAGS) or args.tasks or args.out:
            raise ConfigError("--resume continues a run with its own settings; give no other setting")
        trainer = Trainer.resume(args.resume, progress=False if args.no_progress else None)
        print(f"resuming {args.resume} at epoch {trainer.position['epoch'] + 1}, step {trainer.position['step']}")
    else:
        config = _train_config(args)
        out = args.out or _default_out(config)
        if os.path.exists(os.path.join(out, "checkpoints", "last.pt")):
            raise ConfigError(f"--out {out} already holds a run; --resume {out} to continue it, or choose another --out")
        created = not os.path.exists(out)
        try:  # before the data loads: an unusable --out fails at once
            os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot create the run directory ({exc.strerror or exc})") from None
        from mtlkernels.train import load_data

        try:
            data = load_data(config)
            print("\n".join(data.summary()))
            trainer = Trainer(config, data, out)
        except BaseException:  # a run that never started leaves no directory behind
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        c = config
        print(f"training {c.model} with {c.method} on {c.data} ({len(trainer.names)} tasks: "
              f"{', '.join(trainer.names)}) -> {out}")
    m = trainer.fit()
    _report(m)
    print(f"run directory: {trainer.run_dir} (metrics.json, checkpoints/, plots/)")
    if m.get("interrupted"):
        print(f"interrupted: continue with  mtlkernels train --resume {trainer.run_dir}")
        return 130
    return 0


def _cmd_evaluate(args) -> int:
    from mtlkernels.scoring import evaluate_run

    result = evaluate_run(args.run_dir, data=args.data, split=args.split, checkpoint=args.checkpoint, by=args.by)
    for line in result["notes"]:
        print(line)
    print("\n".join(_table(f"{result['source']} ({args.checkpoint} checkpoint):", result["metrics"],
                           result["tasks"])))
    for value, seg in result.get("segments", {}).items():
        print("\n".join(_table(f"{args.by} = {value} ({seg['rows']:,} rows):", seg["metrics"], result["tasks"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def _cmd_compare(args) -> int:
    from mtlkernels.scoring import compare_runs

    print("\n".join(compare_runs(args.run_dirs, split=args.split)))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtlkernels", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print build information").set_defaults(fn=_cmd_info)

    train = sub.add_parser("train", help="train a model into a run directory")
    _add_train_flags(train)
    train.set_defaults(fn=_cmd_train)

    ev = sub.add_parser("evaluate", help="re-score a run's model on a split or a file")
    ev.add_argument("run_dir")
    ev.add_argument("--data", default=None, help="a CSV/Parquet file with the run's columns (default: the run's data)")
    ev.add_argument("--split", default="test", choices=("train", "valid", "test"),
                    help="split of the run's data to score (ignored with a file)")
    ev.add_argument("--checkpoint", default="best", choices=("best", "last"))
    ev.add_argument("--by", default=None, metavar="FIELD",
                    help="also score each value of this sparse field apart (e.g. heavy: heavy users vs the others)")
    ev.add_argument("--json", default=None, metavar="FILE", help="also write the metrics to FILE")
    ev.set_defaults(fn=_cmd_evaluate)

    cmp_ = sub.add_parser("compare", help="print runs side by side")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("--split", default="test", choices=("valid", "test"))
    cmp_.set_defaults(fn=_cmd_compare)

    demo = sub.add_parser("demo", help="swap an expert-loop MMoE for the fused one and time it")
    demo.add_argument("--batch", type=positive_int, default=4096)
    demo.add_argument("--in-features", type=positive_int, default=128)
    demo.add_argument("--expert-dim", type=positive_int, default=128)
    demo.add_argument("--experts", type=positive_int, default=8)
    demo.add_argument("--tasks", type=positive_int, default=4)
    demo.add_argument("--threads", type=positive_int, default=1)
    demo.add_argument("--reps", type=positive_int, default=20)
    demo.set_defaults(fn=_cmd_demo)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError) as exc:
        print(f"mtlkernels {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"mtlkernels {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the command must read or write
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mtlkernels {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
