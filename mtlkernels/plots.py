"""The PNG plots of a run, drawn with matplotlib from its ``metrics.json`` content alone:
per-task loss and AUC curves, task weights, the task-gradient cosine heatmap, reliability."""
from __future__ import annotations

import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _curves(epochs: list[dict], tasks: list[str], metric: str, title: str, path: str) -> str | None:
    panels = [t for t in tasks if any(not math.isnan(e[s].get(t, {}).get(metric, float("nan")))
                                      for e in epochs for s in ("train", "valid"))]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    x = [e["epoch"] for e in epochs]
    for ax, t in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("valid", "-s")):
            ax.plot(x, [e[split].get(t, {}).get(metric, float("nan")) for e in epochs], style, label=split, ms=3)
        ax.set_title(f"{t}: {title}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def write_plots(run_dir: str, m: dict[str, Any]) -> list[str]:
    """Writes ``run_dir/plots/*.png`` from a metrics dict; returns the paths written."""
    out = os.path.join(run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    tasks, epochs, written = m["tasks"], m["epochs"], []
    if epochs:
        for metric, title in (("loss", "loss"), ("auc", "AUC"), ("mse", "MSE")):
            p = _curves(epochs, tasks, metric, title, os.path.join(out, f"{metric}.png"))
            if p:
                written.append(p)
        fig, ax = plt.subplots(figsize=(6, 3.4))
        diag = m.get("diagnostics", [])
        if diag:
            steps = [d["step"] for d in diag]
            for k, t in enumerate(tasks):
                ax.plot(steps, [d["weights"][k] for d in diag], label=t)
            ax.set_xlabel("step")
        else:
            for k, t in enumerate(tasks):
                ax.plot([e["epoch"] for e in epochs], [e["weights"][k] for e in epochs], "-o", label=t, ms=3)
            ax.set_xlabel("epoch")
        ax.set_title(f"task weights ({m['config']['method']})")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, os.path.join(out, "task_weights.png")))
    diag = [d for d in m.get("diagnostics", []) if d.get("cosine") is not None]
    if diag and len(tasks) > 1:
        T = len(tasks)
        mean = [[sum(d["cosine"][i][j] for d in diag) / len(diag) for j in range(T)] for i in range(T)]
        fig, ax = plt.subplots(figsize=(1.2 * T + 2.5, 1.1 * T + 1.8))
        im = ax.imshow(mean, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(T), tasks, rotation=45, ha="right")
        ax.set_yticks(range(T), tasks)
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{mean[i][j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"task-gradient cosine (mean of {len(diag)} samples)")
        fig.colorbar(im, ax=ax)
        written.append(_save(fig, os.path.join(out, "gradient_cosine.png")))
    final = (m.get("final") or {}).get("test")
    rel = [t for t in tasks if final and "reliability" in final.get(t, {})]
    if rel:
        fig, axes = plt.subplots(1, len(rel), figsize=(3.6 * len(rel), 3.4), squeeze=False)
        for ax, t in zip(axes[0], rel):
            r = final[t]["reliability"]
            hi = max(max(r["predicted"]), max(r["observed"])) * 1.05 or 1.0
            ax.plot([0, hi], [0, hi], ":", color="grey")
            ax.plot(r["predicted"], r["observed"], "-o", ms=3)
            ax.set_xlabel("mean prediction")
            ax.set_ylabel("positive rate")
            ax.set_title(f"{t}: calibration")
            ax.grid(alpha=0.3)
        written.append(_save(fig, os.path.join(out, "calibration.png")))
    return written
