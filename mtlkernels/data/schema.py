"""What a table holds: the tasks, the feature columns, the user and weight columns, the split.

A ``DataSchema`` is all the data path needs to turn a CSV/Parquet file (or a pandas frame)
into tensors. It reads from a plain dict, the ``[data]`` table of a TOML config::

    [data]
    path = "events.csv"
    sparse = ["item_id", "category"]
    multi_value = [{ name = "genres", separator = "|", pooling = "mean" }]
    dense = ["price", "age"]
    log_dense = ["price"]          # log1p before standardisation (heavy-tailed counts)
    user = "user_id"
    weight = "sample_weight"
    tasks = [{ name = "click" }, { name = "purchase", after = "click" },
             { name = "watch_time", kind = "regression" }]
    split = { kind = "random", fractions = [0.8, 0.1, 0.1], seed = 0 }
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mtlkernels._types import check_fields
from mtlkernels.data.errors import DataError

TASK_KINDS = ("binary", "regression")
POOLINGS = ("mean", "sum")
SPLIT_KINDS = ("random", "column", "time")
SPLIT_NAMES = ("train", "valid", "test")
#: values of a split column accepted for each split (compared lower-cased)
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                 "dev": "valid", "test": "test", "testing": "test"}
MISSING_LABEL_POLICIES = ("error", "drop", "mask")


@dataclass(frozen=True)
class Task:
    """One prediction target, one label column.

    Args:
        name: the task's name (metrics, plots, the ``--monitor`` flag).
        column: the label column (default: ``name``).
        kind: ``"binary"`` (labels 0/1 or booleans; BCE) or ``"regression"`` (finite floats; MSE).
        after: the funnel parent, another binary task: a positive here requires a positive there
            (a conversion needs a click); a violation is an error naming the column and row.
        conditional: the label is observed only where ``after`` is positive (CVR trained on
            clicked impressions only: the task's mask is the parent's label). Without it the
            task lives on the entire space (ESMM's CTCVR).
        mask_column: a 0/1 column marking the rows where this task's label is observed.
        positive_weight: a column whose value weighs each positive sample of this task
            (YouTube's watch-time weighted cross-entropy: positives weigh their watch time,
            negatives 1). Multiplies the schema's ``weight`` column when both are given.
        weight: a fixed task weight multiplying this task's loss (``0.3 L_click + 0.7 L_finish``);
            it composes with every balancing method, which then sees the weighted losses.
    """

    name: str
    column: str | None = None
    kind: str = "binary"
    after: str | None = None
    conditional: bool = False
    mask_column: str | None = None
    positive_weight: str | None = None
    weight: float = 1.0

    @property
    def label_column(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class MultiValueField:
    """A categorical column holding several values per row (``"a|b|c"``), pooled by mean or sum
    into one embedding slot. An empty cell is an empty bag (a zero vector)."""

    name: str
    separator: str = "|"
    pooling: str = "mean"


@dataclass(frozen=True)
class Split:
    """How rows are assigned to train / valid / test.

    ``kind="random"``: a seeded permutation cut by ``fractions``. ``kind="column"``: the column
    ``column`` names the split of each row (``train``, ``valid``/``validation``/``val``,
    ``test``). ``kind="time"``: rows ordered by ``column`` and cut by ``fractions`` (earliest
    for training); rows with equal times never straddle a cut.
    """

    kind: str = "random"
    column: str | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0


@dataclass(frozen=True)
class DataSchema:
    """The columns of a multi-task table and how to split it.

    ``sparse``: single-valued categorical columns; ``multi_value``: bag columns; ``dense``:
    numeric columns (standardised with training statistics; ``log_dense`` ones take ``log1p``
    first and must be >= 0; missing values are set to the training mean and counted).
    Vocabularies are learned on the training split; a value seen fewer than ``min_count``
    times there, or never, maps to the out-of-vocabulary id 0. ``user``: the user-id column
    for GAUC/uAUC (not a feature unless also listed in ``sparse``). ``weight``: a per-sample
    weight column (>= 0). ``missing_labels``: what a missing (NaN/empty) label does where the
    task is observed: ``"error"`` (default), ``"drop"`` the row (counted in the report) or
    ``"mask"`` the task on that row.
    """

    tasks: tuple[Task, ...]
    sparse: tuple[str, ...] = ()
    multi_value: tuple[MultiValueField, ...] = ()
    dense: tuple[str, ...] = ()
    log_dense: tuple[str, ...] = ()
    user: str | None = None
    weight: str | None = None
    split: Split = field(default_factory=Split)
    min_count: int = 1
    missing_labels: str = "error"

    def __post_init__(self):
        validate(self)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (TOML-writable: no None values) that ``from_dict`` reads back."""
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSchema":
        """Reads the ``[data]`` table of a config (keys other than the schema's, like ``path``,
        are ignored by this function and handled by the caller). Unknown keys are errors."""
        d = dict(d)
        d.pop("path", None)
        d.pop("format", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"data: unknown key(s) {unknown}; expected some of {sorted(known | {'path'})}")
        if "tasks" not in d:
            raise DataError("data: no tasks: give tasks = [{ name = \"click\" }, ...]")
        d["tasks"] = tuple(_record(Task, t, "data.tasks") for t in _list(d["tasks"], "data.tasks"))
        d["multi_value"] = tuple(
            _record(MultiValueField, {"name": m} if isinstance(m, str) else m, "data.multi_value")
            for m in _list(d.get("multi_value", ()), "data.multi_value"))
        for key in ("sparse", "dense", "log_dense"):
            d[key] = tuple(_list(d.get(key, ()), f"data.{key}"))
        if "split" in d:
            s = dict(d["split"]) if isinstance(d["split"], dict) else _fail("data.split must be a table")
            if "fractions" in s:
                fr = _list(s["fractions"], "data.split.fractions")
                if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in fr):
                    raise DataError(f"data.split.fractions must be numbers, got {fr!r}")
                s["fractions"] = tuple(float(x) for x in fr)
            d["split"] = _record(Split, s, "data.split")
        return cls(**d)


def _fail(msg: str):
    raise DataError(msg)


def _list(x, name: str) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    raise DataError(f"{name} must be a list, got {type(x).__name__}")


def _record(kind, d, name: str):
    if not isinstance(d, dict):
        raise DataError(f"{name}: each entry must be a table, got {d!r}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise DataError(f"{name}: unknown key(s) {unknown} in {d!r}; expected some of {sorted(known)}")
    try:
        return kind(**d)
    except TypeError as exc:
        raise DataError(f"{name}: {exc}") from None


def _drop_none(x):
    if isinstance(x, dict):
        return {k: _drop_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, (list, tuple)):
        return [_drop_none(v) for v in x]
    return x


RESERVED_TASK_NAMES = ("mean_auc", "mean_loss")


def _names(values, where: str) -> None:
    if any(not isinstance(v, str) or not v for v in values):
        raise DataError(f"{where} must list column names, got {list(values)!r}")


def validate(s: DataSchema) -> None:
    """Consistency of a schema on its own (columns present in a file are checked on reading)."""
    check_fields(s, "data.", DataError)
    check_fields(s.split, "data.split.", DataError)
    if s.split.seed < 0:
        raise DataError(f"data.split.seed must be >= 0, got {s.split.seed}")
    for t in s.tasks:
        if not isinstance(t, Task):
            raise DataError(f"data.tasks: each entry must be a task table, got {t!r}")
        check_fields(t, f"task {t.name!r}: ", DataError)
    for m in s.multi_value:
        check_fields(m, f"multi-value field {m.name!r}: ", DataError)
    for key in ("sparse", "dense", "log_dense"):
        _names(getattr(s, key), f"data.{key}")
    if not s.tasks:
        raise DataError("data: at least one task is needed")
    names = [t.name for t in s.tasks]
    if len(set(names)) != len(names):
        raise DataError(f"data.tasks: task names must be distinct, got {names}")
    reserved = sorted(set(names) & set(RESERVED_TASK_NAMES))
    if reserved:
        raise DataError(f"data.tasks: {reserved} are reserved names (scores); rename the task")
    for t in s.tasks:
        if t.kind not in TASK_KINDS:
            raise DataError(f"task {t.name!r}: kind must be one of {TASK_KINDS}, got {t.kind!r}")
        if t.after is not None:
            if t.after not in names or t.after == t.name:
                raise DataError(f"task {t.name!r}: after={t.after!r} must name another task of {names}")
            parent = s.tasks[names.index(t.after)]
            if parent.kind != "binary" or t.kind != "binary":
                raise DataError(f"task {t.name!r}: a funnel (after={t.after!r}) links two binary tasks")
        if t.conditional and t.after is None:
            raise DataError(f"task {t.name!r}: conditional=true needs after = the task it is conditional on")
        if t.conditional and t.mask_column is not None:
            raise DataError(f"task {t.name!r}: give conditional or mask_column, not both")
        if t.positive_weight is not None and t.kind != "binary":
            raise DataError(f"task {t.name!r}: positive_weight applies to binary tasks")
        if not t.weight >= 0:
            raise DataError(f"task {t.name!r}: weight must be >= 0, got {t.weight}")
    for m in s.multi_value:
        if m.pooling not in POOLINGS:
            raise DataError(f"multi-value field {m.name!r}: pooling must be one of {POOLINGS}, got {m.pooling!r}")
        if not m.separator:
            raise DataError(f"multi-value field {m.name!r}: separator must not be empty")
    features = list(s.sparse) + [m.name for m in s.multi_value] + list(s.dense)
    if not features:
        raise DataError("data: no feature column (sparse, multi_value or dense)")
    dup = sorted({c for c in features if features.count(c) > 1})
    if dup:
        raise DataError(f"data: column(s) {dup} listed as more than one feature")
    labels = {t.label_column for t in s.tasks}
    leak = sorted(labels & set(features))
    if leak:
        raise DataError(f"data: label column(s) {leak} are also features")
    extra = sorted(set(s.log_dense) - set(s.dense))
    if extra:
        raise DataError(f"data.log_dense: {extra} are not dense columns")
    if s.min_count < 1:
        raise DataError(f"data.min_count must be >= 1, got {s.min_count}")
    if s.missing_labels not in MISSING_LABEL_POLICIES:
        raise DataError(f"data.missing_labels must be one of {MISSING_LABEL_POLICIES}, got {s.missing_labels!r}")
    sp = s.split
    if sp.kind not in SPLIT_KINDS:
        raise DataError(f"data.split.kind must be one of {SPLIT_KINDS}, got {sp.kind!r}")
    if sp.kind in ("column", "time") and not sp.column:
        raise DataError(f"data.split: kind={sp.kind!r} needs column = the {sp.kind} column")
    if sp.kind != "column":
        fr = tuple(sp.fractions)
        if len(fr) != 3 or any(not (0 <= f <= 1) for f in fr) or abs(sum(fr) - 1) > 1e-6 or fr[0] == 0:
            raise DataError(f"data.split.fractions must be 3 numbers in [0, 1] summing to 1 with a non-empty "
                            f"train share, got {list(fr)}")
