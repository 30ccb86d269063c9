"""Fitted preprocessing and splits: vocabularies and dense statistics from the training split
only, their saved state, the three kinds of split, masks and weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels.data import (DataError, DataSchema, MultiValueField, Preprocessor, Split, Task, apply_preprocessing,
                             load_frame)
from mtlkernels.data.frames import split_rows

BY_COLUMN = Split("column", "part")


def ids(t: torch.Tensor) -> list:
    return t.flatten().tolist()


def test_vocabularies_come_from_the_training_split_only():
    frame = pd.DataFrame({
        "y": [1, 0, 1, 0, 1, 0, 1],
        "item": ["a", "a", "b", "c", "a", "b", "d"],
        "tags": ["x|y", "x", "", "z|x", "x", "y|w", None],
        "part": ["train", "train", "train", "valid", "valid", "test", "test"]})
    schema = DataSchema(tasks=(Task("y"),), sparse=("item",), multi_value=(MultiValueField("tags"),), split=BY_COLUMN)
    data = load_frame(frame, schema)
    assert data.preprocessor.vocab == {"item": ["a", "b"], "tags": ["x", "y"]}  # by count, then by value
    assert ids(data.train.sparse) == [1, 1, 2]
    assert ids(data.valid.sparse) == [0, 1]  # c was only seen in valid
    assert ids(data.test.sparse) == [2, 0]  # d only in test
    assert ids(data.valid.bags.values) == [0, 1, 1] and data.valid.bags.lengths.tolist() == [[2], [1]]  # z|x, x
    assert ids(data.test.bags.values) == [2, 0] and data.test.bags.lengths.tolist() == [[2], [0]]  # y|w, empty
    assert data.report["oov_rate"]["train"]["item"] == 0
    assert data.report["oov_rate"]["valid"]["item"] == 0.5
    fs = data.feature_schema(4)
    assert [f.vocab_size for f in fs.sparse] == [3] and [f.vocab_size for f in fs.bags] == [3]


@pytest.mark.parametrize("min_count,vocab", [(1, ["a", "b", "c"]), (2, ["a", "b"]), (3, ["a"]), (4, [])])
def test_min_count(min_count, vocab):
    frame = pd.DataFrame({"y": [1, 0] * 3, "item": ["a", "b", "a", "c", "a", "b"],
                          "tags": ["a|c", "b", "b", "", "a", "b"], "part": ["train"] * 6})
    schema = DataSchema(tasks=(Task("y"),), sparse=("item",), multi_value=(MultiValueField("tags"),),
                        split=BY_COLUMN, min_count=min_count)
    data = load_frame(frame, schema)
    assert data.preprocessor.vocab["item"] == vocab
    assert data.preprocessor.vocab_size("item") == len(vocab) + 1
    expected = [vocab.index(v) + 1 if v in vocab else 0 for v in frame["item"]]
    assert ids(data.train.sparse) == expected
    tag_vocab = data.preprocessor.vocab["tags"]  # tags: b x3, a x2, c x1
    assert tag_vocab == ["b", "a", "c"][:{1: 3, 2: 2, 3: 1, 4: 0}[min_count]]


def test_dense_standardisation_uses_training_statistics():
    frame = pd.DataFrame({
        "y": [1, 0, 1, 0, 1, 0],
        "price": [1.0, 2.0, 3.0, 6.0, 10.0, 0.0],
        "count": [0, 1, 3, 7, 15, 0],  # log1p: ln2 * [0, 1, 2, 3] in training, ln2 * 4 in valid
        "flat": [5.0, 5.0, 5.0, 5.0, 9.0, 1.0],
        "part": ["train"] * 4 + ["valid", "test"]})
    schema = DataSchema(tasks=(Task("y"),), dense=("price", "count", "flat"), log_dense=("count",), split=BY_COLUMN)
    data = load_frame(frame, schema)
    ln2 = math.log(2.0)
    pre = data.preprocessor
    assert pre.mean == pytest.approx([3.0, 1.5 * ln2, 5.0])
    assert pre.std == pytest.approx([math.sqrt(3.5), ln2 * math.sqrt(1.25), 1.0])  # population std; 0 -> 1
    s35, s125 = math.sqrt(3.5), math.sqrt(1.25)
    expected_train = [[(p - 3) / s35, (k - 1.5) / s125, 0.0] for p, k in zip([1, 2, 3, 6], range(4))]
    torch.testing.assert_close(data.train.dense, torch.tensor(expected_train))
    torch.testing.assert_close(data.valid.dense, torch.tensor([[math.sqrt(14.0), math.sqrt(5.0), 4.0]]))
    torch.testing.assert_close(data.test.dense, torch.tensor([[-3 / s35, -1.5 / s125, -4.0]]))
    assert data.train.dense.dtype == torch.float32
    assert "dense_missing" not in data.report


def test_missing_dense_values_take_the_training_mean_and_are_counted():
    frame = pd.DataFrame({"y": [1, 0, 1, 0, 1, 0], "price": [1.0, None, 3.0, 5.0, None, 100.0],
                          "age": [20.0, 30.0, 40.0, 50.0, 60.0, None], "part": ["train"] * 4 + ["valid", "test"]})
    schema = DataSchema(tasks=(Task("y"),), dense=("price", "age"), split=BY_COLUMN)
    data = load_frame(frame, schema)
    pre = data.preprocessor
    assert pre.mean == pytest.approx([3.0, 35.0])  # the missing training value is not part of the mean
    assert pre.std[0] == pytest.approx(math.sqrt(8 / 3))
    raw = data.train.dense.double() * torch.tensor(pre.std, dtype=torch.float64) + torch.tensor(pre.mean,
                                                                                                 dtype=torch.float64)
    torch.testing.assert_close(raw[:, 0], torch.tensor([1.0, 3.0, 3.0, 5.0], dtype=torch.float64))
    assert data.valid.dense[0, 0] == 0 and data.test.dense[0, 1] == 0  # standardised training mean
    assert data.report["dense_missing"] == {"price": 2, "age": 1}
    assert any("price: 2 missing values set to the training mean" in line for line in data.summary())


def rich_frame(n: int, seed: int) -> pd.DataFrame:
    """Every kind of column: ids (a few unseen per seed), bags, dense with gaps, log counts,
    users, weights, a funnel with a conditional task, a masked task and watch-time weights."""
    rng = np.random.default_rng(seed)
    click = rng.random(n) < 0.5
    tags = np.array(["", "a", "b|c", "a|a|d", f"s{seed}", "c"], dtype=object)
    price = rng.gamma(2.0, 3.0, n)
    price[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame({
        "click": click.astype(int), "buy": (click & (rng.random(n) < 0.4)).astype(int),
        "rating": rng.normal(3, 1, n), "rated": (rng.random(n) < 0.7).astype(int),
        "item": rng.choice([f"i{j}" for j in range(12 + seed)], n), "device": rng.integers(0, 3, n),
        "tags": tags[rng.integers(0, len(tags), n)], "price": price, "views": rng.poisson(20, n),
        "user": rng.choice(["u1", "u2", "u3", f"v{seed}"], n), "w": rng.uniform(0.5, 2, n),
        "watch": np.round(rng.exponential(30, n), 1), "part": rng.choice(["train", "valid", "test"], n)})


RICH = DataSchema(
    tasks=(Task("click", positive_weight="watch"), Task("buy", after="click", conditional=True),
           Task("rating", kind="regression", mask_column="rated")),
    sparse=("item", "device"), multi_value=(MultiValueField("tags", pooling="sum"),), dense=("price", "views"),
    log_dense=("views",), user="user", weight="w", split=BY_COLUMN)


def assert_same_tables(a, b):
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


def test_state_round_trip_gives_identical_tensors_on_a_new_frame():
    data = load_frame(rich_frame(300, seed=0), RICH)
    state = json.loads(json.dumps(data.preprocessor.state_dict()))  # plain data
    restored = Preprocessor.from_state(state)
    assert restored.schema == RICH and restored.vocab == data.preprocessor.vocab
    new = rich_frame(120, seed=1).drop(columns="part")  # unseen ids and tags, no split column
    a, b = apply_preprocessing(new, data.preprocessor), apply_preprocessing(new, restored)
    assert_same_tables(a, b)
    assert len(a) == 120 and a.mask is not None and a.weights.shape == (120, 3)
    assert (a.sparse[:, 0] == 0).any() and (a.bags.values == 0).any()  # the new frame's unseen values are OOV


def test_reapplying_the_state_to_the_training_rows_reproduces_the_split():
    frame = rich_frame(300, seed=0)
    data = load_frame(frame, RICH)
    restored = Preprocessor.from_state(data.preprocessor.state_dict())
    for name in ("train", "valid", "test"):
        assert_same_tables(apply_preprocessing(frame[frame["part"] == name], restored), data.splits[name])


def test_state_of_another_version_is_refused():
    state = load_frame(rich_frame(50, seed=0), RICH).preprocessor.state_dict()
    with pytest.raises(DataError, match="preprocessing state of version 99"):
        Preprocessor.from_state(dict(state, version=99))


def test_integer_ids_encode_alike_with_and_without_missing_values():
    """pandas reads an integer column with a gap as floats (``3.0``); the same id in a file
    without gaps (``3``) must get the same embedding row."""
    train = pd.DataFrame({"y": [1, 0, 1, 0], "item": [7, 3, None, 7], "tags": [3, None, 4, 3]})
    schema = DataSchema(tasks=(Task("y"),), sparse=("item",), multi_value=(MultiValueField("tags"),),
                        split=Split(fractions=(1.0, 0.0, 0.0)))
    pre = load_frame(train, schema).preprocessor
    new = apply_preprocessing(pd.DataFrame({"y": [1, 0], "item": [3, 7], "tags": [4, 3]}), pre)
    item, tags = pre.vocab["item"], pre.vocab["tags"]
    assert ids(new.sparse) == [item.index("3") + 1, item.index("7") + 1]
    assert ids(new.bags.values) == [tags.index("4") + 1, tags.index("3") + 1]


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------

def assert_partition(rows: dict, n: int):
    assert set(rows) == {"train", "valid", "test"}
    together = np.concatenate(list(rows.values()))
    assert sorted(together.tolist()) == list(range(n))


@pytest.mark.parametrize("n,fractions", [(1000, (0.8, 0.1, 0.1)), (37, (0.7, 0.2, 0.1)), (10, (0.5, 0.5, 0.0))])
def test_random_split_is_seeded_and_cut_by_the_fractions(n, fractions):
    frame = pd.DataFrame({"y": np.zeros(n), "x": np.arange(n)})
    schema = DataSchema(tasks=(Task("y"),), dense=("x",), split=Split("random", fractions=fractions, seed=3))
    rows = split_rows(frame, schema)
    assert_partition(rows, n)
    for k, f in zip(("train", "valid", "test"), fractions):
        assert abs(len(rows[k]) - f * n) <= 1, (k, len(rows[k]))
    again = split_rows(frame, schema)
    assert all(np.array_equal(rows[k], again[k]) for k in rows)
    other = split_rows(frame, DataSchema(tasks=(Task("y"),), dense=("x",), split=Split("random", fractions=fractions,
                                                                                       seed=4)))
    assert not np.array_equal(rows["train"], other["train"])
    data = load_frame(frame, schema)
    assert [len(data.splits[k]) for k in ("train", "valid", "test")] == [len(rows[k]) for k in ("train", "valid", "test")]


def test_column_split_reads_the_aliases():
    part = ["train", " Training", "VALID", "validation", "val", "dev ", "test", "Testing"]
    frame = pd.DataFrame({"y": [0] * 8, "x": range(8), "part": part})
    rows = split_rows(frame, DataSchema(tasks=(Task("y"),), dense=("x",), split=BY_COLUMN))
    assert {k: v.tolist() for k, v in rows.items()} == {"train": [0, 1], "valid": [2, 3, 4, 5], "test": [6, 7]}


FRACTIONS = st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.34, 0.33, 0.33), (0.9, 0.0, 0.1), (1.0, 0.0, 0.0)])


@settings(max_examples=150, deadline=None)
@given(times=st.lists(st.integers(0, 6), min_size=1, max_size=40), fractions=FRACTIONS)
def test_time_split_puts_earlier_rows_first_and_never_cuts_a_tie(times, fractions):
    frame = pd.DataFrame({"y": np.zeros(len(times)), "x": 0.0, "ts": times})
    rows = split_rows(frame, DataSchema(tasks=(Task("y"),), dense=("x",), split=Split("time", "ts", fractions)))
    assert_partition(rows, len(times))
    t = np.asarray(times)
    parts = [t[rows[k]] for k in ("train", "valid", "test")]
    for i in range(3):
        for j in range(i + 1, 3):
            if parts[i].size and parts[j].size:
                assert parts[i].max() < parts[j].min()  # so equal times share a split
    if len(set(times)) == len(times):  # no ties: the cuts fall where the fractions say
        cuts = np.round(np.cumsum(fractions)[:2] * len(times)).astype(int)
        assert [p.size for p in parts] == np.diff([0, *cuts, len(times)]).tolist()


def test_time_split_of_date_strings():
    dates = ["2024-03-05", "2024-01-01", "2024-02-10", "2024-01-20", "2024-03-01",
             "2024-01-02", "2024-02-01", "2024-02-20", "2024-01-10", "2024-03-10"]
    frame = pd.DataFrame({"y": [0] * 10, "x": range(10), "ts": dates})
    rows = split_rows(frame, DataSchema(tasks=(Task("y"),), dense=("x",), split=Split("time", "ts")))
    order = np.argsort(pd.to_datetime(dates).to_numpy())
    assert rows["train"].tolist() == order[:8].tolist()
    assert rows["valid"].tolist() == [order[8]] and rows["test"].tolist() == [order[9]]


# ---------------------------------------------------------------------------------------------
# masks and weights
# ---------------------------------------------------------------------------------------------

def test_masks_of_conditional_tasks_and_mask_columns():
    frame = pd.DataFrame({"click": [1, 0, 1, 0, 1], "buy": [1, 0, 0, 0, 1], "stars": [4.0, None, 2.0, 5.0, None],
                          "rated": [1, 0, 1, 1, 0], "x": range(5), "part": ["train"] * 5})
    schema = DataSchema(tasks=(Task("click"), Task("buy", after="click", conditional=True),
                               Task("stars", kind="regression", mask_column="rated")), dense=("x",), split=BY_COLUMN)
    d = load_frame(frame, schema).train
    assert d.mask.dtype == torch.bool
    assert d.mask.tolist() == [[True, True, True], [True, False, False], [True, True, True], [True, False, True],
                               [True, True, False]]
    assert d.labels[:, 2].tolist() == [4.0, 0.0, 2.0, 5.0, 0.0]  # unobserved labels are 0, never NaN


@pytest.mark.parametrize("weight", [None, "w"])
def test_positive_weights_are_per_task(weight):
    frame = pd.DataFrame({"click": [1, 0, 1, 0], "like": [1, 0, 0, 0], "watch": [30.0, 99.0, 2.5, 0.0],
                          "w": [1.0, 0.25, 2.0, 1.0], "x": range(4), "part": ["train"] * 4})
    schema = DataSchema(tasks=(Task("click", positive_weight="watch"), Task("like")), dense=("x",), weight=weight,
                        split=BY_COLUMN)
    d = load_frame(frame, schema).train
    w = torch.tensor([1.0, 0.25, 2.0, 1.0]) if weight else torch.ones(4)
    assert d.weights.shape == (4, 2) and d.weights.dtype == torch.float32
    torch.testing.assert_close(d.weights[:, 0], w * torch.tensor([30.0, 1.0, 2.5, 1.0]))  # negatives weigh 1
    torch.testing.assert_close(d.weights[:, 1], w)


def test_sample_weights_alone_are_per_row_and_users_are_indexed():
    frame = pd.DataFrame({"y": [1, 0, 1], "w": [1.0, 0.0, 3.0], "user": ["bob", "ann", "bob"], "x": range(3),
                          "part": ["train"] * 3})
    d = load_frame(frame, DataSchema(tasks=(Task("y"),), dense=("x",), user="user", weight="w", split=BY_COLUMN)).train
    assert d.weights.tolist() == [1.0, 0.0, 3.0]
    assert d.users.dtype == torch.int64 and d.users[0] == d.users[2] != d.users[1]
    assert d.mask is None
