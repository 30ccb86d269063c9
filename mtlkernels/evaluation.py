"""Per-task evaluation of predictions: AUC, GAUC/uAUC where users exist, logloss and calibration
for binary tasks, MSE for regression tasks; each task on the rows where it is observed."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from mtlkernels import metrics
from mtlkernels.data.table import TabularData

RELIABILITY_BUCKETS = 10


def _f(x) -> float:
    return float(x) if x is not None else float("nan")


def task_metrics(logits: Tensor, data: TabularData, kinds: Sequence[str], names: Sequence[str], *,
                 reliability: bool = False) -> dict[str, Any]:
    """``{task: {metric: value}}`` plus ``"mean_auc"`` (over binary tasks) from ``logits``
    ``[N, T]`` (``model.task_logits``) and the table's labels. Metrics are unweighted (sample
    weights shape training, not the score). ``reliability=True`` adds per task the
    reliability diagram: mean prediction and positive rate in 10 prediction-quantile buckets."""
    out: dict[str, Any] = {}
    aucs = []
    for k, (name, kind) in enumerate(zip(names, kinds)):
        rows = data.mask[:, k] if data.mask is not None else None
        z = logits[:, k] if rows is None else logits[rows, k]
        y = data.labels[:, k] if rows is None else data.labels[rows, k]
        m: dict[str, Any] = {"rows": int(y.numel())}
        if kind == "regression":
            m["mse"] = float(((z.double() - y.double()) ** 2).mean()) if y.numel() else float("nan")
            out[name] = m
            continue
        p = torch.sigmoid(z.double())
        pos = int(y.sum())
        m["positives"] = pos
        both = 0 < pos < y.numel()
        m["auc"] = float(metrics.auc(p, y)) if both else float("nan")
        m["logloss"] = float(metrics.logloss(labels=y, logits=z.double())) if y.numel() else float("nan")
        m["calibration"] = float(metrics.calibration(p, y).ratio) if y.numel() else float("nan")
        if data.users is not None and both:
            users = data.users if rows is None else data.users[rows]
            per_user = metrics.per_user_auc(p, y, users)  # one sort serves both weightings
            g, u = metrics.gauc_of(per_user, "impressions"), metrics.gauc_of(per_user, "uniform")
            m["gauc"], m["uauc"], m["uauc_users"] = _f(g.value), _f(u.value), u.users_kept
        if reliability and y.numel():
            b = metrics.quantile_buckets(p, RELIABILITY_BUCKETS)
            ids, inv, counts = torch.unique(b, return_inverse=True, return_counts=True)
            zeros = torch.zeros(ids.numel(), dtype=torch.float64)
            m["reliability"] = {"predicted": (zeros.index_add(0, inv, p) / counts).tolist(),
                                "observed": (zeros.index_add(0, inv, y.double()) / counts).tolist(),
                                "rows": counts.tolist()}
        if not math.isnan(m["auc"]):
            aucs.append(m["auc"])
        out[name] = m
    out["mean_auc"] = sum(aucs) / len(aucs) if aucs else float("nan")
    return out


def monitor_value(monitor: str, scores: dict[str, Any], losses: dict[str, float]) -> float:
    """The early-stopping score, higher is better: ``mean_auc``, ``mean_loss`` (negated), or a
    task's AUC (negated MSE for a regression task)."""
    if monitor == "mean_auc":
        return scores["mean_auc"]
    if monitor == "mean_loss":
        return -sum(losses.values()) / len(losses)
    m = scores[monitor]
    return m["auc"] if "auc" in m else -m["mse"]
