"""From a file or a pandas frame to fitted, split tensors: read, check, split, fit the
preprocessing on the training split, transform every split."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mtlkernels.data import validate
from mtlkernels.data.errors import DataError
from mtlkernels.data.preprocess import Preprocessor, Targets, targets
from mtlkernels.data.schema import SPLIT_ALIASES, SPLIT_NAMES, DataSchema, Split
from mtlkernels.data.table import TabularData


@dataclass
class MultiTaskData:
    """A data set ready to train on: the three splits as tensors, the fitted preprocessing (save
    ``preprocessor.state_dict()`` with a model), and a report of what was read, dropped and
    imputed (``report``: plain data)."""

    schema: DataSchema
    preprocessor: Preprocessor
    splits: dict[str, TabularData]
    report: dict[str, Any] = field(default_factory=dict)
    name: str = "data"

    @property
    def train(self) -> TabularData:
        return self.splits["train"]

    @property
    def valid(self) -> TabularData:
        return self.splits["valid"]

    @property
    def test(self) -> TabularData:
        return self.splits["test"]

    def feature_schema(self, embedding_dim: int = 16, *, dense_projection: bool = True, dense_bins: int = 0):
        """The ``mtlkernels.nn.FeatureSchema`` of these tensors (see ``Preprocessor.feature_schema``)."""
        return self.preprocessor.feature_schema(embedding_dim, dense_projection=dense_projection,
                                                dense_bins=dense_bins)

    def select_tasks(self, names: list[str]) -> "MultiTaskData":
        """The same data with only the tasks ``names`` (in that order): single-task baselines.
        A kept task whose funnel parent is dropped keeps its mask and loses the link."""
        all_names = self.schema.task_names
        unknown = [n for n in names if n not in all_names]
        if unknown or not names or len(set(names)) != len(names):
            raise DataError(f"tasks: {names} must be distinct names from {all_names}")
        idx = [all_names.index(n) for n in names]
        tasks = tuple(t if t.after in names else dataclasses.replace(t, after=None, conditional=False)
                      for t in (self.schema.tasks[i] for i in idx))
        schema = dataclasses.replace(self.schema, tasks=tasks)
        splits = {k: v.select_tasks(idx) for k, v in self.splits.items()}
        report = dict(self.report, positive_rate={n: v for n, v in self.report.get("positive_rate", {}).items()
                                                  if n in names})
        return MultiTaskData(schema, self.preprocessor, splits, report, self.name)

    def summary(self) -> list[str]:
        """Human-readable lines: rows per split, dropped rows by reason, positive rates."""
        r = self.report
        lines = [f"{self.name}: {r.get('rows_read', '?')} rows read; " +
                 ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())]
        for reason, count in r.get("dropped", {}).items():
            lines.append(f"  dropped {count:,} rows: {reason}")
        for c, count in r.get("dense_missing", {}).items():
            lines.append(f"  {c}: {count:,} missing values set to the training mean")
        rates = r.get("positive_rate", {})
        for task, per in rates.items():
            lines.append(f"  {task}: positive rate " + ", ".join(f"{k} {v:.2%}" for k, v in per.items()))
        return lines


#: cells read as missing in the numeric columns of a CSV (labels, dense, weights); in categorical
#: columns only an empty cell is missing
NUMERIC_MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")


def categorical_columns(schema: DataSchema) -> list[str]:
    """Columns read as text, never type-guessed ("007" stays "007", "NA" stays "NA")."""
    cols = list(schema.sparse) + [m.name for m in schema.multi_value] + [c for c in (schema.user,) if c]
    if schema.split.kind == "column":
        cols.append(schema.split.column)
    return cols


def read_table(path: str | os.PathLike, fmt: str | None = None, schema: DataSchema | None = None) -> pd.DataFrame:
    """A CSV (any compression pandas infers from the suffix) or a Parquet file as a frame. With a
    ``schema``, its categorical columns are read as text (only an empty cell is missing), so the
    same value gives the same token in every file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    fmt = fmt or ("parquet" if path.endswith((".parquet", ".pq")) else "csv")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'mtlkernels[parquet]'") from None
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    if fmt != "csv":
        raise DataError(f"{path}: format must be csv or parquet, got {fmt!r}")
    try:
        if schema is None:
            return pd.read_csv(path, skipinitialspace=True, low_memory=False)
        text = set(categorical_columns(schema))
        header = pd.read_csv(path, nrows=0, skipinitialspace=True).columns
        missing = {c: [""] if c in text else list(NUMERIC_MISSING) for c in header}
        return pd.read_csv(path, skipinitialspace=True, low_memory=False, dtype={c: str for c in text if c in header},
                           keep_default_na=False, na_values=missing)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def split_rows(frame: pd.DataFrame, schema: DataSchema) -> dict[str, np.ndarray]:
    """Row positions of train / valid / test."""
    sp, n = schema.split, len(frame)
    if sp.kind == "column":
        names = frame[sp.column].astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
        bad = names.isna().to_numpy()
        if bad.any():
            r = int(np.flatnonzero(bad)[0]) + 1
            raise DataError(f"column {sp.column!r}: split value {frame[sp.column].iloc[r - 1]!r} at row {r}; "
                            f"expected one of {sorted(SPLIT_ALIASES)}")
        names = names.to_numpy()
        return {k: np.flatnonzero(names == k) for k in SPLIT_NAMES}
    if sp.kind == "random":
        order = np.random.default_rng(sp.seed).permutation(n)
        cuts = np.round(np.cumsum(sp.fractions)[:2] * n).astype(np.int64)
        return dict(zip(SPLIT_NAMES, np.split(order, cuts)))
    t = frame[sp.column]
    key = pd.to_datetime(t, errors="coerce") if not pd.api.types.is_numeric_dtype(t) else t
    if key.isna().any():
        r = int(np.flatnonzero(key.isna().to_numpy())[0]) + 1
        raise DataError(f"column {sp.column!r}: time {t.iloc[r - 1]!r} at row {r} is missing or not a time")
    order = np.argsort(key.to_numpy(), kind="stable")
    sorted_key = key.to_numpy()[order]
    cuts = []
    for c in np.round(np.cumsum(sp.fractions)[:2] * n).astype(np.int64):
        # move each cut forward past rows with the same time, so equal times share a split
        cuts.append(int(np.searchsorted(sorted_key, sorted_key[c - 1], side="right")) if 0 < c < n else int(c))
    return dict(zip(SPLIT_NAMES, np.split(order, cuts)))


def load_frame(frame: pd.DataFrame, schema: DataSchema, *, name: str = "data") -> MultiTaskData:
    """Checks ``frame``, splits it, fits the preprocessing on the training rows and returns the
    tensors of every split. Rows dropped (``missing_labels="drop"``) are counted in the report."""
    validate.check_columns(frame, schema, name)
    frame = frame.reset_index(drop=True)
    tg = targets(frame, schema)
    check_dense(frame, schema)
    report: dict[str, Any] = {"rows_read": len(frame), "dropped": {}}
    if tg.dropped.any():
        report["dropped"]["a label missing (missing_labels = \"drop\")"] = int(tg.dropped.sum())
    rows = {k: v[~tg.dropped[v]] for k, v in split_rows(frame, schema).items()}
    pre = Preprocessor.fit(frame.iloc[rows["train"]].reset_index(drop=True), schema)
    splits = {}
    for k, r in rows.items():
        part = {}
        splits[k] = pre.transform(frame.iloc[r].reset_index(drop=True), _take(tg, r), part)
        report.setdefault("oov_rate", {})[k] = part.get("oov_rate", {})
        for c, m in part.get("dense_missing", {}).items():
            report.setdefault("dense_missing", {})[c] = report.get("dense_missing", {}).get(c, 0) + m
    report["positive_rate"] = positive_rates(schema, splits)
    return MultiTaskData(schema, pre, splits, report, name)


def check_dense(frame: pd.DataFrame, schema: DataSchema) -> None:
    """The dense checks of the preprocessing (numbers, finite, ``log_dense`` >= 0) on the whole
    frame, so that an error names the row of the file, not of a split."""
    for c in schema.dense:
        Preprocessor._dense_raw(frame, c, schema)


def _take(tg: Targets, rows: np.ndarray) -> Targets:
    return Targets(tg.labels[rows], tg.observed[rows], None if tg.weights is None else tg.weights[rows],
                   tg.dropped[rows])


def positive_rates(schema: DataSchema, splits: dict[str, TabularData]) -> dict[str, dict[str, float]]:
    """Share of positives among the observed rows, per binary task and split."""
    out = {}
    for k, t in enumerate(schema.tasks):
        if t.kind != "binary":
            continue
        out[t.name] = {}
        for name, d in splits.items():
            obs = d.labels[:, k] if d.mask is None else d.labels[d.mask[:, k], k]
            out[t.name][name] = float(obs.mean()) if obs.numel() else float("nan")
    return out


def load_file(path: str | os.PathLike, schema: DataSchema, fmt: str | None = None) -> MultiTaskData:
    """``load_frame`` of a CSV or Parquet file."""
    return load_frame(read_table(path, fmt, schema), schema, name=os.path.basename(os.fspath(path)))


def apply_preprocessing(frame: pd.DataFrame, preprocessor: Preprocessor, *, name: str = "data",
                        report: dict | None = None) -> TabularData:
    """Tensors of a new frame under a saved preprocessing (the evaluation of a trained model on
    another file): same checks, no split, nothing re-learned. Rows dropped by the
    missing-label policy and missing dense values set to the training mean are counted in
    ``report`` (``rows_read``, ``dropped``, ``dense_missing``, ``oov_rate``)."""
    schema = preprocessor.schema
    validate.check_columns(frame, dataclasses.replace(schema, split=Split()), name)  # no split column needed
    frame = frame.reset_index(drop=True)
    tg = targets(frame, schema)
    check_dense(frame, schema)
    keep = np.flatnonzero(~tg.dropped)
    if report is not None:
        report["rows_read"] = len(frame)
        report["dropped"] = {"a label missing (missing_labels = \"drop\")": int(tg.dropped.sum())} if tg.dropped.any() else {}
    return preprocessor.transform(frame.iloc[keep].reset_index(drop=True), _take(tg, keep), report)
