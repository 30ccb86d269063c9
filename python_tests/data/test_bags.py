"""Multi-value fields in tables: bags read from a frame, rows gathered by ``TabularData.take``
and ``batches`` against per-row Python loops."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels.data import Bags, DataSchema, MultiValueField, Split, TabularData, Task, load_frame


def make_table(lengths: list[list[int]]) -> TabularData:
    """N rows with K bags each of the given lengths; bag values are 0, 1, 2, ... in storage
    order (every value distinct, so a misplaced one shows), the other columns keyed by row."""
    n = len(lengths)
    lens = torch.tensor(lengths, dtype=torch.long).reshape(n, -1)
    values = torch.arange(int(lens.sum()), dtype=torch.long)
    rows = torch.arange(n)
    return TabularData(sparse=rows[:, None] * 10, dense=rows[:, None].float() / 2, labels=(rows[:, None] % 2).float(),
                       bags=Bags(values, lens), mask=(rows[:, None] % 3) > 0, weights=rows.float() + 1, users=rows % 4)


def looped_bags(table: TabularData, index: list[int]) -> tuple[list[int], list[list[int]]]:
    """The bags of rows ``index`` by walking the storage row by row."""
    values, lengths = table.bags
    per_row, start = [], 0
    for row_lengths in lengths.tolist():
        n = sum(row_lengths)
        per_row.append(values[start:start + n].tolist())
        start += n
    return [v for i in index for v in per_row[i]], [lengths[i].tolist() for i in index]


@st.composite
def tables_and_indices(draw):
    k = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), min_size=1, max_size=12))
    index = draw(st.lists(st.integers(0, len(lengths) - 1), max_size=20))  # repeats, any order, maybe empty
    return lengths, index


@settings(max_examples=200, deadline=None)
@given(tables_and_indices())
def test_take_gathers_bags_like_a_row_loop(case):
    lengths, index = case
    table = make_table(lengths)
    out = table.take(torch.tensor(index, dtype=torch.long))
    values, lens = looped_bags(table, index)
    assert out.bags.values.tolist() == values
    assert out.bags.lengths.tolist() == lens
    assert out.bags.values.dtype == torch.long and out.bags.lengths.shape == (len(index), len(lengths[0]))
    for name in ("sparse", "dense", "labels", "mask", "weights", "users"):
        assert torch.equal(getattr(out, name), getattr(table, name)[index]), name
    again = out.take(torch.arange(len(index) - 1, -1, -1))  # a taken table takes again (its own offsets)
    assert again.bags.values.tolist() == looped_bags(table, index[::-1])[0]


def test_new_bags_assigned_to_a_table_are_gathered_from_their_own_offsets():
    table = make_table([[1, 2], [0, 3], [2, 2]])
    table.take(torch.tensor([2, 0]))  # computes and keeps the row offsets of the first bags
    table.bags = make_table([[3, 0], [1, 1], [0, 2]]).bags
    out = table.take(torch.tensor([2, 0]))
    assert out.bags.values.tolist() == looped_bags(table, [2, 0])[0]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 50])
def test_batches_in_order_concatenate_to_the_table(batch_size):
    table = make_table([[1, 0], [2, 3], [0, 0], [4, 1], [1, 1], [0, 2], [3, 0]])
    batches = list(table.batches(batch_size))
    assert len(batches) == table.num_batches(batch_size)
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert torch.equal(torch.cat([b.bags.values for b in batches]), table.bags.values)
    assert torch.equal(torch.cat([b.bags.lengths for b in batches]), table.bags.lengths)
    assert torch.equal(torch.cat([b.sparse for b in batches]), table.sparse)


def test_shuffled_batches_are_a_seeded_permutation_and_resume():
    table = make_table([[i % 3, (i * 7) % 4] for i in range(23)])
    batches = list(table.batches(5, generator=torch.Generator().manual_seed(1)))
    order = torch.cat([b.sparse[:, 0] // 10 for b in batches])  # sparse holds row * 10
    assert sorted(order.tolist()) == list(range(23)) and order.tolist() != list(range(23))
    for b in batches:
        rows = (b.sparse[:, 0] // 10).tolist()
        assert b.bags.values.tolist() == looped_bags(table, rows)[0]
    resumed = list(table.batches(5, generator=torch.Generator().manual_seed(1), start=2))
    assert len(resumed) == len(batches) - 2
    assert all(torch.equal(a.bags.values, b.bags.values) for a, b in zip(resumed, batches[2:]))


def test_tensors_round_trip():
    table = make_table([[1, 2], [0, 0], [3, 1]])
    back = TabularData.from_tensors(table.tensors())
    assert torch.equal(back.bags.values, table.bags.values) and torch.equal(back.bags.lengths, table.bags.lengths)
    assert torch.equal(back.take(torch.tensor([2, 0])).bags.values, table.take(torch.tensor([2, 0])).bags.values)


def test_rows_disagreeing_with_the_labels_are_refused():
    with pytest.raises(ValueError, match="bags have 2 rows, labels 3"):
        TabularData(sparse=torch.zeros(3, 1, dtype=torch.long), dense=torch.zeros(3, 0), labels=torch.zeros(3, 1),
                    bags=Bags(torch.zeros(1, dtype=torch.long), torch.tensor([[1], [0]])))


def test_bags_read_from_a_frame():
    frame = pd.DataFrame({
        "y": [1, 0, 1, 0, 1],
        "genres": ["rock|pop", "", "pop | jazz|rock", None, "jazz"],
        "tags": ["a;b;a", "b", "", "c", ";;"],  # repeats are kept; empty tokens are not
        "part": ["train"] * 5})
    schema = DataSchema(tasks=(Task("y"),), multi_value=(MultiValueField("genres"), MultiValueField("tags", ";", "sum")),
                        split=Split("column", "part"))
    data = load_frame(frame, schema)
    g, t = data.preprocessor.vocab["genres"], data.preprocessor.vocab["tags"]
    assert sorted(g) == ["jazz", "pop", "rock"] and sorted(t) == ["a", "b", "c"]

    def enc(vocab, tokens):
        return [vocab.index(x) + 1 for x in tokens]

    expected = [enc(g, ["rock", "pop"]) + enc(t, ["a", "b", "a"]), enc(t, ["b"]), enc(g, ["pop", "jazz", "rock"]),
                enc(t, ["c"]), enc(g, ["jazz"])]
    bags = data.train.bags
    assert bags.lengths.tolist() == [[2, 3], [0, 1], [3, 0], [0, 1], [1, 0]]
    assert bags.values.tolist() == [v for row in expected for v in row]
    assert data.train.sparse.shape == (5, 0)
