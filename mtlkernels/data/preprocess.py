"""Learned preprocessing: vocabularies with an out-of-vocabulary id and dense standardisation,
fitted on the training split, saved with a run and reapplied to any later frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtlkernels.data import validate
from mtlkernels.data.errors import DataError
from mtlkernels.data.schema import DataSchema
from mtlkernels.data.table import Bags, TabularData

#: bump when the encoding of a frame changes (invalidates caches built on it)
VERSION = 2
OOV = 0
MISSING_TOKEN = "<missing>"


@dataclass
class Targets:
    """Labels ``[N, T]`` (0 where unobserved), the observed mask ``[N, T]``, the sample weights
    (``[N]``, ``[N, T]`` or None) and the rows the missing-label policy drops."""

    labels: np.ndarray
    observed: np.ndarray
    weights: np.ndarray | None
    dropped: np.ndarray


def targets(frame: pd.DataFrame, schema: DataSchema) -> Targets:
    """Reads and checks every label, mask and weight column of ``frame``."""
    n, names = len(frame), schema.task_names
    raw = {t.name: validate.numeric(frame, t.label_column) for t in schema.tasks}
    observed = {t.name: (validate.flags(frame, t.mask_column) if t.mask_column else np.ones(n, bool))
                for t in schema.tasks}
    for t in schema.tasks:  # conditional tasks are observed where their parent is positive
        if t.conditional:
            observed[t.name] = observed[t.name] & (raw[t.after] == 1)
    drop = np.zeros(n, bool)
    for t in schema.tasks:
        v, col = raw[t.name], t.label_column
        if t.kind == "binary":
            validate.binary(v, col, observed[t.name])
        else:
            bad = observed[t.name] & np.isinf(v)
            if bad.any():
                r = int(np.flatnonzero(bad)[0]) + 1
                raise DataError(f"column {col!r}: label {v[r - 1]} at row {r} is not finite")
        miss = validate.missing(v, col, observed[t.name], schema.missing_labels)
        if schema.missing_labels == "drop":
            drop |= miss
        observed[t.name] = observed[t.name] & ~miss
    for t in schema.tasks:
        if t.after is not None:
            parent = schema.tasks[names.index(t.after)]
            validate.funnel(raw[t.name], raw[t.after], t.label_column, parent.label_column,
                            observed[t.name] & observed[t.after] & ~drop)
    labels = np.stack([np.where(observed[k], raw[k], 0.0) for k in names], 1)
    obs = np.stack([observed[k] for k in names], 1)
    return Targets(labels, obs, _weights(frame, schema, labels), drop)


def _weights(frame: pd.DataFrame, schema: DataSchema, labels: np.ndarray) -> np.ndarray | None:
    w = None
    if schema.weight:
        w = validate.numeric(frame, schema.weight)
        validate.finite_nonnegative(w, schema.weight, "sample weight")
    per_task = [t for t in schema.tasks if t.positive_weight]
    if not per_task:
        return w
    out = np.ones(labels.shape) if w is None else np.repeat(w[:, None], labels.shape[1], 1)
    for t in per_task:
        k = schema.task_names.index(t.name)
        pw = validate.numeric(frame, t.positive_weight)
        validate.finite_nonnegative(np.where(labels[:, k] == 1, pw, 0.0), t.positive_weight, "positive weight")
        out[:, k] *= np.where(labels[:, k] == 1, pw, 1.0)
    return out


def _text(col: pd.Series, fill: str) -> pd.Series:
    """Cells as strings, ``fill`` where missing. A whole number in a float column (how pandas
    reads an integer column with a missing value) is written as an integer, so ``3.0`` there
    and ``3`` in a file without missing values are one token."""
    text = col.astype(object).where(col.notna(), fill).astype(str)
    if pd.api.types.is_float_dtype(col.dtype):
        v = col.to_numpy(np.float64)
        whole = np.isfinite(v) & (v == np.round(v)) & (np.abs(v) < 2.0 ** 63)
        if whole.any():
            text = text.where(~whole, pd.Series(v, index=col.index).where(whole, 0).astype(np.int64).astype(str))
    return text


def _tokens(col: pd.Series) -> pd.Series:
    return _text(col, MISSING_TOKEN)


def _vocabulary(values: pd.Series, min_count: int) -> list[str]:
    counts = values.value_counts(sort=False)
    counts = counts[counts >= min_count].sort_index()
    return counts.sort_values(ascending=False, kind="stable").index.tolist()


def _encode(values: pd.Series, vocab: list[str]) -> np.ndarray:
    return pd.Categorical(values, categories=vocab).codes.astype(np.int64) + 1  # unseen -1 -> OOV 0


def _bag_tokens(col: pd.Series, separator: str) -> tuple[pd.Series, np.ndarray]:
    """Tokens of a bag column (positions of their rows in the index) and per-row counts."""
    text = _text(col, "")
    tok = text.str.split(separator, regex=False).explode().str.strip()
    tok = tok[tok != ""]
    rows = tok.index.to_numpy(np.int64)
    return tok, np.bincount(rows, minlength=len(col))


class Preprocessor:
    """Vocabulary per sparse and multi-value field (id 0 = out of vocabulary: unseen, or seen
    fewer than ``schema.min_count`` times in training), ``log1p`` for ``log_dense`` columns,
    mean/std per dense column (std 0 -> 1), all from the training frame. ``state_dict()`` is
    plain data (lists and floats) saved with a run; ``from_state`` restores it."""

    def __init__(self, schema: DataSchema, vocab: dict[str, list[str]], mean: list[float], std: list[float]):
        self.schema, self.vocab, self.mean, self.std = schema, vocab, mean, std

    @classmethod
    def fit(cls, frame: pd.DataFrame, schema: DataSchema) -> "Preprocessor":
        vocab = {c: _vocabulary(_tokens(frame[c]), schema.min_count) for c in schema.sparse}
        for m in schema.multi_value:
            vocab[m.name] = _vocabulary(_bag_tokens(frame[m.name], m.separator)[0], schema.min_count)
        mean, std = [], []
        for c in schema.dense:
            x = cls._dense_raw(frame, c, schema)
            x = x[~np.isnan(x)]
            mean.append(float(x.mean()) if x.size else 0.0)
            s = float(x.std()) if x.size else 0.0
            std.append(s if s > 0 else 1.0)
        return cls(schema, vocab, mean, std)

    def feature_schema(self, embedding_dim: int = 16, *, dense_projection: bool = True, dense_bins: int = 0):
        """The ``mtlkernels.nn.FeatureSchema`` of the tensors this preprocessing produces
        (vocabulary sizes include the out-of-vocabulary id)."""
        from mtlkernels.nn.features import BagField, FeatureSchema, SparseField

        s = self.schema
        return FeatureSchema(
            sparse=tuple(SparseField(c, self.vocab_size(c)) for c in s.sparse),
            bags=tuple(BagField(m.name, self.vocab_size(m.name), m.pooling) for m in s.multi_value),
            dense=tuple(s.dense), embedding_dim=embedding_dim, dense_projection=dense_projection,
            dense_bins=dense_bins)

    def vocab_size(self, field: str) -> int:
        """Embedding rows of a field: its vocabulary plus the out-of-vocabulary id."""
        return len(self.vocab[field]) + 1

    @staticmethod
    def _dense_raw(frame: pd.DataFrame, column: str, schema: DataSchema) -> np.ndarray:
        x = validate.numeric(frame, column)
        if np.isinf(x).any():
            r = int(np.flatnonzero(np.isinf(x))[0]) + 1
            raise DataError(f"column {column!r}: value {x[r - 1]} at row {r} is not finite")
        if column in schema.log_dense:
            bad = x < 0
            if bad.any():
                r = int(np.flatnonzero(bad)[0]) + 1
                raise DataError(f"column {column!r}: value {x[r - 1]} at row {r} is negative; log_dense "
                                "columns must be >= 0")
            x = np.log1p(x)
        return x

    def transform(self, frame: pd.DataFrame, tg: Targets, report: dict | None = None) -> TabularData:
        """Tensors of ``frame`` (already checked, rows kept) with its targets. Counts of missing
        dense values (set to the training mean) and of out-of-vocabulary ids go to ``report``."""
        s, n = self.schema, len(frame)
        sparse = np.zeros((n, len(s.sparse)), np.int64)
        for j, c in enumerate(s.sparse):
            sparse[:, j] = _encode(_tokens(frame[c]), self.vocab[c])
        dense = np.zeros((n, len(s.dense)), np.float32)
        for j, c in enumerate(s.dense):
            x = self._dense_raw(frame, c, s)
            nan = np.isnan(x)
            if nan.any() and report is not None:
                report.setdefault("dense_missing", {})[c] = int(nan.sum())
            dense[:, j] = np.where(nan, 0.0, (x - self.mean[j]) / self.std[j])
        if report is not None:
            report["oov_rate"] = {c: float((sparse[:, j] == OOV).mean()) for j, c in enumerate(s.sparse)}
        return TabularData(
            sparse=torch.from_numpy(sparse), dense=torch.from_numpy(dense),
            labels=torch.from_numpy(tg.labels.astype(np.float32)), bags=self._bags(frame),
            mask=None if tg.observed.all() else torch.from_numpy(tg.observed),
            weights=None if tg.weights is None else torch.from_numpy(tg.weights.astype(np.float32)),
            users=None if not s.user else torch.from_numpy(pd.factorize(_tokens(frame[s.user]))[0].astype(np.int64)))

    def _bags(self, frame: pd.DataFrame) -> Bags | None:
        fields = self.schema.multi_value
        if not fields:
            return None
        n, K = len(frame), len(fields)
        keys, ids, lengths = [], [], np.zeros((n, K), np.int64)
        for k, m in enumerate(fields):
            tok, lengths[:, k] = _bag_tokens(frame[m.name], m.separator)
            keys.append(tok.index.to_numpy(np.int64) * K + k)
            ids.append(_encode(tok, self.vocab[m.name]))
        order = np.argsort(np.concatenate(keys), kind="stable")  # row-major over (row, field)
        return Bags(torch.from_numpy(np.concatenate(ids)[order]), torch.from_numpy(lengths))

    def state_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "schema": self.schema.to_dict(), "vocab": self.vocab,
                "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Preprocessor":
        if state.get("version") != VERSION:
            raise DataError(f"preprocessing state of version {state.get('version')}; this mtlkernels reads "
                            f"version {VERSION}")
        return cls(DataSchema.from_dict(state["schema"]), state["vocab"], state["mean"], state["std"])
