"""The synthetic two-task regression data of the MMoE paper (Ma et al., KDD 2018, section 3.2),
with a controllable task correlation.

1. Two orthonormal ``u1, u2`` in R^d; ``w1 = c u1``, ``w2 = c (p u1 + sqrt(1 - p^2) u2)``, so the
   cosine of the two tasks' weight vectors is exactly ``p``.
2. ``x ~ N(0, I_d)``; ``y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k`` with the
   same ``alpha_i, beta_i`` for both tasks and ``eps_k ~ N(0, noise_std^2)``.

The paper gives neither ``alpha, beta`` nor ``c, m, d``. Ours: ``d = 100``, ``c = 1``, ``m = 10``,
``alpha_i, beta_i ~ N(0, 1)`` drawn once from the seed, noise standard deviation 0.01 (the
"0.01" of the paper read as a standard deviation). The sines make the labels less correlated
than the weights: at seed 0, 20,000 rows, the label Pearson correlation is 1.00 / 0.71 / 0.11 /
0.01 / -0.04 for p = 1 / 0.9 / 0.5 / 0 / -0.5 (monotone in p, as the paper's knob needs).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mtlkernels.data.errors import DataError
from mtlkernels.data.frames import MultiTaskData, load_frame
from mtlkernels.data.schema import DataSchema, Split, Task

DIM, SCALE, SINES, NOISE_STD = 100, 1.0, 10, 0.01


def mmoe_frame(rows: int = 30_000, correlation: float = 0.5, *, seed: int = 0, dim: int = DIM,
               sines: int = SINES, scale: float = SCALE, noise_std: float = NOISE_STD) -> pd.DataFrame:
    """Columns ``x0..x{d-1}``, ``y1``, ``y2``; deterministic for a seed (the same ``u1, u2, alpha,
    beta`` at every correlation of one seed, so a correlation sweep changes only ``p``)."""
    if not -1 <= correlation <= 1:
        raise DataError(f"mmoe synthetic: correlation must be in [-1, 1], got {correlation}")
    if rows < 1 or dim < 2 or sines < 0 or seed < 0:
        raise DataError(f"mmoe synthetic: rows >= 1, dim >= 2, sines >= 0, seed >= 0 needed, got {rows}, {dim}, "
                        f"{sines}, {seed}")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    alpha, beta = rng.standard_normal(sines), rng.standard_normal(sines)
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1 - correlation ** 2) * u2)
    x = rng.standard_normal((rows, dim))
    cols = {f"x{j}": x[:, j] for j in range(dim)}
    for k, w in ((1, w1), (2, w2)):
        z = x @ w
        cols[f"y{k}"] = z + np.sin(alpha[None] * z[:, None] + beta[None]).sum(1) + noise_std * rng.standard_normal(rows)
    return pd.DataFrame(cols)


def mmoe_schema(dim: int = DIM, seed: int = 0) -> DataSchema:
    return DataSchema(tasks=(Task("y1", kind="regression"), Task("y2", kind="regression")),
                      dense=tuple(f"x{j}" for j in range(dim)), split=Split("random", seed=seed))


def mmoe(rows: int = 30_000, correlation: float = 0.5, *, seed: int = 0, **kwargs) -> MultiTaskData:
    """``mmoe_frame`` through the data path: dense ``x`` (standardised), two regression tasks,
    a random 80/10/10 split."""
    frame = mmoe_frame(rows, correlation, seed=seed, **kwargs)
    dim = sum(c.startswith("x") for c in frame.columns)
    return load_frame(frame, mmoe_schema(dim, seed), name=f"mmoe synthetic (p={correlation:g})")
