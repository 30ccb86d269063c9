"""The shipped Census-Income data under the MMoE paper's protocol, and the tensor cache.

Each task group is parsed once per module (a few seconds each) into a cache directory under
``tmp_path``; every later load in this module must come from that cache."""
from __future__ import annotations

import gzip
import os

import pytest
import torch

from mtlkernels.data import DataError, cache, census


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mtlk-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLK_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def group1(cache_dir):
    """The first load of group 1, made to meet a corrupt cache entry under its key (garbage
    written there just before the cache reads it): it must parse the files and rebuild the
    entry. Returns the data and the path of the entry."""
    real_load, corrupted = cache.load, []

    def corrupt_then_load(key):
        path = os.path.join(cache.cache_dir(), key + ".pt")
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 this is not a torch file")
        corrupted.append(path)
        return real_load(key)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "load", corrupt_then_load)
        data = census.load(1)
    assert len(corrupted) == 1
    return data, corrupted[0]


@pytest.fixture(scope="module")
def group2_weighted(cache_dir):
    return census.load(2, sample_weight=True)


@pytest.fixture
def no_parsing(monkeypatch):
    """Any parse or preprocessing of the Census files fails the test."""
    def fail(*args, **kwargs):
        raise AssertionError("the Census files were parsed again")

    monkeypatch.setattr(census, "read_frame", fail)
    monkeypatch.setattr(census, "load_frame", fail)


def test_split_sizes(group1):
    data, _ = group1
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 199_523, "valid": 49_881, "test": 49_881}
    assert data.report["rows_read"] == 299_285 and data.report["dropped"] == {}


def test_positive_rates_of_group_1(group1):
    data, _ = group1
    assert data.schema.task_names == ["income", "never_married"]
    rates = data.train.labels.double().mean(0)
    assert float(rates[0]) == pytest.approx(0.062, abs=0.0005)
    assert float(rates[1]) == pytest.approx(0.433, abs=0.001)
    assert data.report["positive_rate"]["income"]["train"] == pytest.approx(float(rates[0]))


def test_group_2_has_the_education_task(group1, group2_weighted):
    g2 = group2_weighted
    assert g2.schema.task_names == ["education", "never_married"]
    assert float(g2.train.labels[:, 0].double().mean()) == pytest.approx(0.336, abs=0.001)
    assert torch.equal(g2.train.labels[:, 1], group1[0].train.labels[:, 1])  # never_married in both groups


@pytest.mark.parametrize("group,sources", [(1, {"income_class", "marital_status"}), (2, {"education", "marital_status"})])
def test_label_sources_and_the_instance_weight_are_not_features(group, sources, group1, group2_weighted):
    data = group1[0] if group == 1 else group2_weighted
    s = data.schema
    features = set(s.sparse) | set(s.dense) | {m.name for m in s.multi_value}
    assert not features & (sources | {"instance_weight"} | set(s.task_names))
    assert len(features) == len(census.COLUMNS) - 3  # 42 columns less the two sources and the weight
    assert set(data.preprocessor.vocab) == set(s.sparse)
    assert data.train.sparse.shape == (199_523, len(s.sparse)) and data.train.dense.shape == (199_523, 7)


def test_sample_weight_is_the_instance_weight(group1, group2_weighted):
    assert group1[0].train.weights is None
    w = group2_weighted.train.weights
    assert w.shape == (199_523,) and bool((w >= 0).all()) and w.unique().numel() > 1000
    with gzip.open(os.path.join(census.DIR, census.FILES[0]), "rt") as f:  # the training rows, in file order
        first = [float(next(f).split(",")[census.COLUMNS.index("instance_weight")]) for _ in range(5)]
    torch.testing.assert_close(w[:5], torch.tensor(first))


def test_a_corrupt_cache_entry_was_rebuilt(group1):
    _, path = group1
    entry = cache.load(os.path.basename(path)[: -len(".pt")])
    assert entry is not None and set(entry["splits"]) == {"train", "valid", "test"}


def test_a_second_load_comes_from_the_cache_and_is_identical(group1, no_parsing):
    first, _ = group1
    again = census.load(1)
    assert again.schema == first.schema and again.name == first.name and again.report == first.report
    assert again.preprocessor.state_dict() == first.preprocessor.state_dict()
    for k, split in first.splits.items():
        a, b = split.tensors(), again.splits[k].tensors()
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), (k, name)


def test_groups_and_weighting_have_their_own_entries(group1, group2_weighted, cache_dir):
    names = sorted(p.name for p in cache_dir.iterdir() if p.suffix == ".pt")
    assert len(names) == 2 and not any(p.suffix == ".tmp" for p in cache_dir.iterdir())


def test_unknown_group():
    with pytest.raises(DataError, match=r"census: group must be one of \[1, 2\], got 3"):
        census.schema(3)


# ---------------------------------------------------------------------------------------------
# the cache on its own
# ---------------------------------------------------------------------------------------------

def test_cache_round_trip_and_bad_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLK_CACHE_DIR", str(tmp_path / "c"))
    assert cache.load("k") is None  # nothing saved yet
    obj = {"t": torch.arange(5), "s": "x"}
    cache.save("k", obj)
    back = cache.load("k")
    assert torch.equal(back["t"], obj["t"]) and back["s"] == "x"
    path = tmp_path / "c" / "k.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    assert cache.load("k") is None
    path.write_bytes(b"garbage")
    assert cache.load("k") is None
    cache.save("k", obj)  # rebuilt over the bad entry
    assert torch.equal(cache.load("k")["t"], obj["t"])


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MTLK_CACHE_DIR", str(blocker / "cache"))
    cache.save("k", {"a": 1})  # no error
    assert cache.load("k") is None
