"""Scoring saved runs: ``evaluate`` (a run's model on a split or another file) and ``compare``
(runs side by side), from a run directory alone."""
from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from mtlkernels.build import ConfigError
from mtlkernels.config import TrainConfig
from mtlkernels.data import DataError, MultiTaskData, Preprocessor, TabularData, apply_preprocessing, read_table


#: most values a ``--by`` field may take in the scored rows (one table per value)
MAX_SEGMENTS = 20


def segments(table: TabularData, pre: Preprocessor, field: str) -> list[tuple[str, torch.Tensor]]:
    """``(value, row indices)`` per value of the sparse field ``field`` in ``table`` (its raw
    values from the run's vocabulary; unseen ones are ``<out of vocabulary>``)."""
    sparse = list(pre.schema.sparse)
    if field not in sparse:
        raise ConfigError(f"--by {field}: not a sparse field of the run's data; sparse fields: "
                          f"{', '.join(sparse) or 'none'}")
    values, inverse = torch.unique(table.sparse[:, sparse.index(field)], return_inverse=True)
    if values.numel() > MAX_SEGMENTS:
        raise ConfigError(f"--by {field}: {values.numel():,} values in the scored rows; a segment field may take "
                          f"at most {MAX_SEGMENTS}")
    names = ["<out of vocabulary>" if v == 0 else pre.vocab[field][v - 1] for v in values.tolist()]
    return [(name, torch.nonzero(inverse == i).squeeze(1)) for i, name in enumerate(names)]


def evaluate_run(run_dir: str, *, data: str | None = None, split: str = "test",
                 checkpoint: str = "best", by: str | None = None) -> dict[str, Any]:
    """Metrics of the run's ``checkpoint`` model on ``split`` of its own data, or on the file
    ``data`` (read with the run's saved preprocessing: same columns, its vocabularies and
    standardisation, nothing re-learned); with ``by`` (a sparse field) also per value of that
    field (``"segments"``: value -> rows and metrics), e.g. heavy users against the others."""
    from mtlkernels.train import Trainer, load_data, read_checkpoint

    s = read_checkpoint(run_dir, checkpoint)
    config = TrainConfig.from_dict(s["config"]).replace(progress=False)
    notes: list[str] = []
    if data is None or data == config.data:
        md = load_data(config)
        if md.preprocessor.state_dict() != s["preprocessor"]:
            raise DataError(f"{run_dir}: its data ({config.data}) no longer gives the preprocessing the model was "
                            "trained with (the file changed?); score a file with --data FILE instead")
        table, source, pre = md.splits[split], f"{config.data} {split}", md.preprocessor
    else:
        if not os.path.exists(data):
            raise ConfigError(f"--data {data}: no such file (evaluate takes the run's own data or a file)")
        pre = Preprocessor.from_state(s["preprocessor"])
        report: dict = {}
        table = apply_preprocessing(read_table(data, schema=pre.schema), pre, name=data, report=report)
        notes = [f"{data}: {report['rows_read']:,} rows read"]
        notes += [f"  dropped {n:,} rows: {why}" for why, n in report["dropped"].items()]
        notes += [f"  {c}: {n:,} missing values set to the training mean" for c, n in
                  report.get("dense_missing", {}).items()]
        all_names = pre.schema.task_names
        table = table.select_tasks([all_names.index(n) for n in s["tasks"]])
        md, source = None, data
    groups = segments(table, pre, by) if by is not None else []
    trainer = Trainer(config, md if md is not None else _data_for(config, s), None)
    trainer.use_weights(s["model"])

    def scores(rows: TabularData) -> dict[str, Any]:
        metrics, losses = trainer.evaluate(rows)
        for n in trainer.names:
            metrics[n]["loss"] = losses[n]
        return metrics

    out = {"run": run_dir, "source": source, "tasks": trainer.names, "metrics": scores(table), "notes": notes}
    if by is not None:
        out["by"] = by
        out["segments"] = {name: {"rows": int(idx.numel()), "metrics": scores(table.take(idx))}
                           for name, idx in groups}
    return out


def _data_for(config: TrainConfig, s: dict[str, Any]):
    """A stand-in ``MultiTaskData`` with the run's preprocessing and no rows, enough to rebuild
    its model."""
    pre = Preprocessor.from_state(s["preprocessor"])
    schema = pre.schema
    empty = TabularData(sparse=torch.zeros(0, len(schema.sparse), dtype=torch.long),
                        dense=torch.zeros(0, len(schema.dense)), labels=torch.zeros(0, len(schema.tasks)))
    md = MultiTaskData(schema, pre, {"train": empty, "valid": empty, "test": empty})
    return md.select_tasks(list(s["tasks"]))


def read_metrics(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir}: no metrics.json; is it a run directory?")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not readable JSON ({exc})") from None


def compare_runs(run_dirs: list[str], *, split: str = "test") -> list[str]:
    """Lines of a table: one row per run (model, method, seed, epochs), per task AUC (uAUC where
    users exist; MSE for regression tasks) on ``split`` of the final scores."""
    runs = [(d, read_metrics(d)) for d in run_dirs]
    tasks = list(dict.fromkeys(t for _, m in runs for t in m["tasks"]))
    header = f"{'run':<36}{'model':>14}{'method':>9}{'seed':>5}{'ep':>4}" + "".join(f"{t:>16}" for t in tasks)
    header += f"{'mean AUC':>10}"
    lines = [f"{split} scores (AUC, uAUC in brackets; MSE for regression)", header]
    for d, m in runs:
        c = m["config"]
        scores = (m.get("final") or {}).get(split)
        cells = []
        for t in tasks:
            r = (scores or {}).get(t)
            if r is None:
                cells.append(f"{'-':>16}")
            elif "mse" in r:
                cells.append(f"{r['mse']:>16.4f}")
            else:
                u = r.get("uauc")
                cells.append(f"{r['auc']:.4f} ({u:.3f})".rjust(16) if u is not None and not math.isnan(u)
                             else f"{r['auc']:>16.4f}")
        mean = scores.get("mean_auc", float("nan")) if scores else float("nan")
        name = os.path.basename(os.path.normpath(d))[:35]
        status = "" if scores else "  (unfinished)"
        lines.append(f"{name:<36}{c['model']:>14}{c['method']:>9}{c['seed']:>5}{len(m['epochs']):>4}" + "".join(cells)
                     + f"{mean:>10.4f}{status}")
    return lines
