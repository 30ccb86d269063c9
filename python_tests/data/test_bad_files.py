"""Bad files: each hand-made table gives one ``DataError`` whose single-line message names the
column and the row (rows numbered from 1, the first data row after the header), whether it is
read from a CSV or from the same table as Parquet."""
from __future__ import annotations

import dataclasses
import re

import pandas as pd
import pytest
import torch

from mtlkernels.data import DataError, DataSchema, Split, Task, load_file

COLUMNS = ("click", "purchase", "item", "price", "age", "w")
ROWS = (
    ("1", "1", "a", "1.5", "30", "1"),
    ("0", "0", "b", "2", "41", "1"),
    ("1", "0", "a", "0", "25", "2"),
    ("0", "0", "c", "10", "33", "0.5"),
    ("1", "0", "b", "3", "52", "1"),
)
SCHEMA = DataSchema(tasks=(Task("click"), Task("purchase", after="click")), sparse=("item",),
                    dense=("price", "age"), log_dense=("price",), weight="w")


def table(edits: dict | None = None, *, drop: str | None = None, extra: dict | None = None) -> str:
    """The CSV text of ROWS with ``edits`` ``{(row from 1, column): text}`` applied, the column
    ``drop`` left out and ``extra`` columns ``{name: [text per row]}`` appended."""
    cols = list(COLUMNS) + list(extra or {})
    rows = [list(r) + [v[i] for v in (extra or {}).values()] for i, r in enumerate(ROWS)]
    for (row, col), text in (edits or {}).items():
        rows[row - 1][cols.index(col)] = text
    if drop is not None:
        k = cols.index(drop)
        cols.pop(k)
        for r in rows:
            r.pop(k)
    return "\n".join(",".join(r) for r in [cols, *rows]) + "\n"


@pytest.fixture(params=["csv", "parquet"])
def write_table(request, write_csv, tmp_path):
    """``write_table(csv_text) -> path``: the CSV itself, or the frame pandas reads from it
    written as Parquet (same columns, same dtypes)."""

    def write(text: str):
        path = write_csv(text)
        if request.param == "csv":
            return path
        pq = tmp_path / "data.parquet"
        pd.read_csv(path, skipinitialspace=True).to_parquet(pq)
        return pq

    return write


def raises_one(path, schema, pattern: str) -> DataError:
    with pytest.raises(DataError) as err:
        load_file(path, schema)
    message = str(err.value)
    assert type(err.value) is DataError
    assert "\n" not in message, message
    assert re.search(pattern, message), message
    return err.value


def test_the_good_table_loads(write_table):
    data = load_file(write_table(table()), SCHEMA)
    assert sum(len(d) for d in data.splits.values()) == len(ROWS)
    assert data.report["dropped"] == {}


@pytest.mark.parametrize("edits,pattern", [
    ({(3, "purchase"): "2"}, r"column 'purchase': label 2\.0 at row 3 is not binary"),
    ({(4, "click"): "0.5"}, r"column 'click': label 0\.5 at row 4 is not binary"),
    ({(2, "click"): "yes"}, r"column 'click': value 'yes' at row 2 is not a number"),
    ({(4, "click"): ""}, r"column 'click': label missing \(NaN/empty\) at row 4"),
    ({(4, "purchase"): "NaN"}, r"column 'purchase': label missing \(NaN/empty\) at row 4"),
    ({(2, "purchase"): "1"}, r"column 'purchase': positive at row 2 without a positive 'click' \(funnel"),
    ({(5, "w"): "-0.5"}, r"column 'w': sample weight at row 5 is -0\.5 \(must be >= 0\)"),
    ({(5, "w"): ""}, r"column 'w': sample weight at row 5 is nan \(must be finite\)"),
    ({(3, "age"): "thirty"}, r"column 'age': value 'thirty' at row 3 is not a number"),
    ({(3, "age"): "inf"}, r"column 'age': value inf at row 3 is not finite"),
    ({(4, "price"): "-1"}, r"column 'price': value -1\.0 at row 4 is negative; log_dense"),
], ids=["label 2", "label 0.5", "label yes", "empty label", "NaN label", "funnel", "negative weight",
        "missing weight", "non-numeric dense", "infinite dense", "negative log_dense"])
def test_bad_cell_names_its_column_and_row(write_table, edits, pattern):
    raises_one(write_table(table(edits)), SCHEMA, pattern)


def test_missing_column_is_named(write_table):
    path = write_table(table(drop="age"))
    raises_one(path, SCHEMA, re.escape(path.name) + r": column\(s\) \['age'\] not found")


@pytest.mark.parametrize("text,pattern", [
    ("", "the file is empty"),
    ("\n\n", "the file is empty"),
    (",".join(COLUMNS) + "\n", "no data rows"),
], ids=["0 bytes", "blank lines", "header only"])
def test_empty_csv(write_csv, text, pattern):
    raises_one(write_csv(text), SCHEMA, r"data\.csv: " + pattern)


def test_header_only_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    pd.DataFrame({c: pd.Series([], dtype="float64") for c in COLUMNS}).to_parquet(path)
    raises_one(path, SCHEMA, r"empty\.parquet: no data rows")


def test_missing_file_and_unknown_format(tmp_path, write_csv):
    raises_one(tmp_path / "nope.csv", SCHEMA, r"nope\.csv: no such file")
    with pytest.raises(DataError, match="format must be csv or parquet, got 'json'"):
        load_file(write_csv(table()), SCHEMA, fmt="json")


def test_bad_dense_value_in_a_later_split_names_the_file_row(write_csv):
    """The row is the file's even when the value sits in the valid or test split (the
    preprocessing sees each split on its own)."""
    schema = dataclasses.replace(SCHEMA, split=Split("column", "part"))
    part = ["train", "train", "test", "valid", "train"]
    raises_one(write_csv(table({(3, "age"): "old"}, extra={"part": part})), schema,
               r"column 'age': value 'old' at row 3 is not a number")
    raises_one(write_csv(table({(4, "price"): "-2"}, extra={"part": part})), schema,
               r"column 'price': value -2\.0 at row 4 is negative")


@pytest.mark.parametrize("value,shown", [("tset", "'tset'"), ("", "nan")])
def test_bad_split_value(write_csv, value, shown):
    schema = dataclasses.replace(SCHEMA, split=Split("column", "part"))
    text = table(extra={"part": ["train", "valid", value, "test", "train"]})
    raises_one(write_csv(text), schema, rf"column 'part': split value {shown} at row 3; expected one of \[")


def test_bad_time_value(write_csv):
    schema = dataclasses.replace(SCHEMA, split=Split("time", "ts"))
    text = table(extra={"ts": ["2024-01-01", "yesterday", "2024-01-03", "2024-01-04", "2024-01-05"]})
    raises_one(write_csv(text), schema, r"column 'ts': time 'yesterday' at row 2 is missing or not a time")


def test_bad_mask_value(write_csv):
    schema = dataclasses.replace(SCHEMA, tasks=(Task("click"), Task("purchase", after="click", mask_column="seen")))
    raises_one(write_csv(table(extra={"seen": ["1", "1", "2", "0", "1"]})), schema,
               r"column 'seen': mask value 2\.0 at row 3 must be 0 or 1")


def test_infinite_regression_label(write_csv):
    schema = dataclasses.replace(SCHEMA, tasks=(Task("click"), Task("watch", kind="regression")))
    raises_one(write_csv(table(extra={"watch": ["3.5", "0", "inf", "1", "2"]})), schema,
               r"column 'watch': label inf at row 3 is not finite")


def test_negative_positive_weight_on_a_positive(write_csv):
    schema = dataclasses.replace(SCHEMA, tasks=(Task("click", positive_weight="watch"), Task("purchase")))
    # row 2 is a negative click: its value is not a weight and is not checked
    raises_one(write_csv(table(extra={"watch": ["3", "-7", "2", "0", "-1"]})), schema,
               r"column 'watch': positive weight at row 5 is -1\.0 \(must be >= 0\)")


POLICY_TEXT = table({(2, "click"): "", (4, "purchase"): "NaN"},
                    extra={"part": ["train", "train", "train", "train", "valid"]})


def test_missing_labels_drop_counts_the_rows(write_table):
    schema = dataclasses.replace(SCHEMA, split=Split("column", "part"), missing_labels="drop")
    data = load_file(write_table(POLICY_TEXT), schema)
    assert sum(data.report["dropped"].values()) == 2
    assert any("dropped 2 rows" in line for line in data.summary())
    torch.testing.assert_close(data.train.labels, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))  # rows 1 and 3
    assert data.train.mask is None
    assert len(data.valid) == 1 and len(data.test) == 0


def test_missing_labels_mask_marks_the_cells(write_table):
    schema = dataclasses.replace(SCHEMA, split=Split("column", "part"), missing_labels="mask")
    data = load_file(write_table(POLICY_TEXT), schema)
    assert data.report["dropped"] == {}
    assert data.train.mask.tolist() == [[True, True], [False, True], [True, True], [True, False]]
    assert data.train.labels.tolist() == [[1, 1], [0, 0], [1, 0], [0, 0]]  # 0 where unobserved
    assert data.report["positive_rate"]["click"]["train"] == pytest.approx(2 / 3)  # observed rows 1, 3, 4
    assert data.valid.mask is None


def test_conditional_task_label_is_not_read_where_unobserved(write_csv):
    """A conditional task is observed only after a positive parent: a missing or non-binary
    label where the parent is 0 is no error."""
    schema = dataclasses.replace(SCHEMA, tasks=(Task("click"), Task("purchase", after="click", conditional=True)),
                                 split=Split("column", "part"))
    text = table({(2, "purchase"): "", (4, "purchase"): "7"}, extra={"part": ["train"] * 5})
    data = load_file(write_csv(text), schema)
    assert data.train.mask[:, 1].tolist() == [True, False, True, False, True]
    raises_one(write_csv(table({(3, "purchase"): ""}, extra={"part": ["train"] * 5})), schema,
               r"column 'purchase': label missing \(NaN/empty\) at row 3")


@pytest.mark.parametrize("d,pattern", [
    ({"tasks": [{"name": "click"}], "sparse": ["item"], "sprase": ["x"]}, r"data: unknown key\(s\) \['sprase'\]"),
    ({"tasks": [{"name": "click", "aftr": "x"}], "sparse": ["item"]}, r"data\.tasks: unknown key\(s\) \['aftr'\]"),
    ({"tasks": [{"name": "click"}], "sparse": ["item"], "split": {"kind": "random", "fraction": [1, 0, 0]}},
     r"data\.split: unknown key\(s\) \['fraction'\]"),
    ({"tasks": [{"name": "click"}], "multi_value": [{"name": "tags", "sep": ";"}]},
     r"data\.multi_value: unknown key\(s\) \['sep'\]"),
    ({"sparse": ["item"]}, "data: no tasks"),
    ({"tasks": [{"name": "click"}], "sparse": "item"}, "data.sparse must be a list, got str"),
    ({"tasks": [{"name": "click"}], "sparse": ["click"]}, r"label column\(s\) \['click'\] are also features"),
], ids=["top level", "task", "split", "multi_value", "no tasks", "not a list", "label as feature"])
def test_schema_from_dict_errors(d, pattern):
    with pytest.raises(DataError, match=pattern) as err:
        DataSchema.from_dict(d)
    assert type(err.value) is DataError


def test_schema_from_dict_ignores_path_and_round_trips():
    d = {"path": "events.csv", "format": "csv", "tasks": [{"name": "click"}, {"name": "buy", "after": "click"}],
         "sparse": ["item"], "multi_value": ["tags", {"name": "genres", "separator": ";", "pooling": "sum"}],
         "dense": ["price"], "log_dense": ["price"], "weight": "w",
         "split": {"kind": "time", "column": "ts", "fractions": [0.7, 0.2, 0.1]}}
    s = DataSchema.from_dict(d)
    assert s.multi_value[0].separator == "|" and s.multi_value[1].pooling == "sum"
    assert s.split.fractions == (0.7, 0.2, 0.1)
    assert DataSchema.from_dict(s.to_dict()) == s
    assert None not in s.to_dict().values()


def test_csv_and_parquet_give_the_same_tensors(write_csv, tmp_path):
    path = write_csv(table())
    pq = tmp_path / "data.parquet"
    pd.read_csv(path).to_parquet(pq)
    a, b = load_file(path, SCHEMA), load_file(pq, SCHEMA)
    assert a.preprocessor.state_dict() == b.preprocessor.state_dict()
    for k in a.splits:
        ta, tb = a.splits[k].tensors(), b.splits[k].tensors()
        assert ta.keys() == tb.keys()
        for name in ta:
            assert torch.equal(ta[name], tb[name]), (k, name)
