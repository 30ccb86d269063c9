"""Checks of a raw frame against its schema, before anything is learned from it. Every failure
is one ``DataError`` naming the column and, where it helps, the first bad row (rows numbered
from 1: the first data row after a CSV's header)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mtlkernels.data.errors import DataError
from mtlkernels.data.schema import DataSchema


def required_columns(schema: DataSchema) -> list[str]:
    cols = [t.label_column for t in schema.tasks]
    cols += [c for t in schema.tasks for c in (t.mask_column, t.positive_weight) if c]
    cols += list(schema.sparse) + [m.name for m in schema.multi_value] + list(schema.dense)
    cols += [c for c in (schema.user, schema.weight) if c]
    if schema.split.kind != "random":
        cols.append(schema.split.column)
    return list(dict.fromkeys(cols))


def check_columns(frame: pd.DataFrame, schema: DataSchema, source: str) -> None:
    if len(frame) == 0:
        raise DataError(f"{source}: no data rows")
    missing = [c for c in required_columns(schema) if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: column(s) {missing} not found; the file has {list(frame.columns)}")


def _first_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0]) + 1


def numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The column as float64; a value that is not a number is an error naming the row."""
    col = frame[column]
    if col.dtype == bool:
        return col.to_numpy(np.float64)
    values = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(values) & col.notna().to_numpy()
    if bad.any():
        r = _first_row(bad)
        raise DataError(f"column {column!r}: value {col.iloc[r - 1]!r} at row {r} is not a number")
    return values


def finite_nonnegative(values: np.ndarray, column: str, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        r = _first_row(bad)
        raise DataError(f"column {column!r}: {what} at row {r} is {values[r - 1]} (must be finite)")
    bad = values < 0
    if bad.any():
        r = _first_row(bad)
        raise DataError(f"column {column!r}: {what} at row {r} is {values[r - 1]} (must be >= 0)")


def binary(values: np.ndarray, column: str, observed: np.ndarray) -> None:
    bad = observed & ~np.isnan(values) & (values != 0) & (values != 1)
    if bad.any():
        r = _first_row(bad)
        raise DataError(f"column {column!r}: label {values[r - 1]} at row {r} is not binary (0/1) on a binary task")


def missing(values: np.ndarray, column: str, observed: np.ndarray, policy: str) -> np.ndarray:
    """Rows where an observed label is missing; an error unless the policy drops or masks them."""
    miss = observed & np.isnan(values)
    if miss.any() and policy == "error":
        r = _first_row(miss)
        raise DataError(f"column {column!r}: label missing (NaN/empty) at row {r} ({int(miss.sum())} rows in "
                        "all); set missing_labels = \"drop\" or \"mask\" to keep going")
    return miss


def funnel(child: np.ndarray, parent: np.ndarray, child_col: str, parent_col: str, observed: np.ndarray) -> None:
    bad = observed & (child == 1) & (parent != 1)
    if bad.any():
        r = _first_row(bad)
        raise DataError(f"column {child_col!r}: positive at row {r} without a positive {parent_col!r} "
                        f"(funnel violation, {int(bad.sum())} rows in all)")


def flags(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = numeric(frame, column)
    bad = np.isnan(values) | ((values != 0) & (values != 1))
    if bad.any():
        r = _first_row(bad)
        raise DataError(f"column {column!r}: mask value {values[r - 1]} at row {r} must be 0 or 1")
    return values == 1
