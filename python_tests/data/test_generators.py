"""The generators: the MMoE paper's synthetic data (its correlation knob) and the recsys-shaped
feed (funnel, sparse positives, heavy users, user bias), each deterministic by seed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mtlkernels import metrics
from mtlkernels.data import DataError, recsys, synthetic
from mtlkernels.data.recsys import TASKS
from mtlkernels.losses import MultiTaskLoss
from mtlkernels.nn import MMoE
from mtlkernels.nn.features import FeatureEmbedding, WithFeatures


def label_correlation(frame: pd.DataFrame) -> float:
    return float(np.corrcoef(frame["y1"], frame["y2"])[0, 1])


@pytest.mark.parametrize("make", [
    lambda seed: synthetic.mmoe_frame(500, 0.5, seed=seed, dim=8),
    lambda seed: recsys.recsys_frame(2000, users=100, items=50, seed=seed),
], ids=["mmoe", "recsys"])
def test_deterministic_by_seed(make):
    a, b, c = make(0), make(0), make(1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


@pytest.mark.parametrize("p", [0.9, 0.5, 0.0])
def test_without_sines_the_label_correlation_is_p(p):
    frame = synthetic.mmoe_frame(4000, p, sines=0, noise_std=1e-6)
    assert label_correlation(frame) == pytest.approx(p, abs=0.05)


def test_with_sines_the_label_correlation_is_monotone_in_p():
    ps = [-0.5, 0.0, 0.5, 0.9, 1.0]
    corr = [label_correlation(synthetic.mmoe_frame(5000, p)) for p in ps]
    assert all(a < b for a, b in zip(corr, corr[1:])), corr
    assert corr[-1] > 0.999  # p = 1: the same task up to the noise
    assert corr[2] < 0.5  # the sines make the labels less correlated than the weights


def test_a_correlation_sweep_changes_only_the_second_task():
    a, b = synthetic.mmoe_frame(300, 0.2, dim=6), synthetic.mmoe_frame(300, 0.8, dim=6)
    pd.testing.assert_frame_equal(a.drop(columns="y2"), b.drop(columns="y2"))
    assert not np.allclose(a["y2"], b["y2"])


def test_mmoe_through_the_data_path():
    data = synthetic.mmoe(1000, 0.5, dim=10)
    assert [len(data.splits[k]) for k in ("train", "valid", "test")] == [800, 100, 100]
    assert data.schema.task_names == ["y1", "y2"] and data.train.labels.shape == (800, 2)
    assert data.train.dense.shape == (800, 10) and data.train.sparse.shape == (800, 0)
    torch.testing.assert_close(data.train.dense.double().mean(0), torch.zeros(10, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(data.train.dense.double().std(0, unbiased=False), torch.ones(10, dtype=torch.float64),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("make,pattern", [
    (lambda: synthetic.mmoe_frame(10, 1.5), r"correlation must be in \[-1, 1\]"),
    (lambda: synthetic.mmoe_frame(0, 0.5), "rows >= 1"),
    (lambda: synthetic.mmoe_frame(10, 0.5, dim=1), "dim >= 2"),
    (lambda: recsys.recsys_frame(10, users=1), "users >= 2"),
])
def test_bad_generator_settings(make, pattern):
    with pytest.raises(DataError, match=pattern):
        make()


@pytest.fixture(scope="module")
def feed():
    return recsys.recsys_frame(20_000, users=500, items=1000)


def test_the_funnel_holds(feed):
    for t in TASKS[1:]:
        assert (feed[t] <= feed["click"]).all(), t
    assert (feed["watch_time"][feed["click"] == 0] == 0).all() and (feed["watch_time"][feed["click"] == 1] > 0).all()


def test_positives_are_sparse(feed):
    rates = feed[list(TASKS)].mean()
    assert 0.03 < rates["click"] < 0.12
    assert all(rates[t] < rates["click"] for t in TASKS[1:])
    assert sum(rates[t] <= 0.01 for t in TASKS) >= 3, rates.to_dict()
    assert all(rates[t] > 0 for t in TASKS)


def test_heavy_users_click_more_and_are_down_weighted(feed):
    heavy = feed["heavy"] == 1
    assert 0 < heavy.mean() < 0.5
    assert feed["click"][heavy].mean() > 1.5 * feed["click"][~heavy].mean()
    assert set(feed["sample_weight"][heavy]) == {0.25} and set(feed["sample_weight"][~heavy]) == {1.0}
    per_user = feed.groupby("user_id")["heavy"].nunique()
    assert (per_user == 1).all()


def test_a_user_bias_score_has_auc_but_no_uauc(feed):
    """Score each impression of the second half by its user's click rate in the first half:
    that ranks users (AUC well above 1/2) and nothing within a user (uAUC 1/2)."""
    first, second = feed.iloc[: len(feed) // 2], feed.iloc[len(feed) // 2:]
    rate = first.groupby("user_id")["click"].mean()
    score = torch.tensor(second["user_id"].map(rate).fillna(first["click"].mean()).to_numpy())
    click, users = torch.tensor(second["click"].to_numpy()), torch.tensor(second["user_id"].to_numpy())
    auc, uauc = float(metrics.auc(score, click)), metrics.uauc(score, click, users)
    assert auc > 0.65
    assert float(uauc.value) == pytest.approx(0.5, abs=1e-12) and uauc.users_kept > 100


def test_bags_and_times_of_the_feed(feed):
    assert feed["timestamp"].is_monotonic_increasing
    n_interests = feed["interests"].str.count(r"\|") + 1
    n_topics = feed["item_topics"].str.count(r"\|") + 1
    assert n_interests.between(1, 4).all() and n_topics.between(1, 2).all()
    assert (feed.groupby("user_id")["interests"].nunique() == 1).all()


def test_recsys_through_the_data_path_with_bags():
    frame = recsys.recsys_frame(5000, users=300, items=200)
    data = recsys.recsys(5000, users=300, items=200)
    train, valid = data.train, data.valid
    assert data.schema.task_names == list(TASKS)
    assert sum(len(d) for d in data.splits.values()) == 5000 and abs(len(train) - 4000) <= 5
    ts = frame["timestamp"].to_numpy()
    assert ts[len(train) - 1] < ts[len(train)]  # the frame is in time order: train = its first rows
    lengths = train.bags.lengths
    assert lengths.shape == (len(train), 2)
    assert lengths[:, 0].min() >= 1 and lengths[:, 0].max() <= 4 and lengths[:, 1].max() <= 2
    counted = frame["interests"].iloc[len(train):len(train) + len(valid)].str.count(r"\|") + 1
    assert valid.bags.lengths[:, 0].tolist() == counted.tolist()
    vocab = data.preprocessor.vocab
    n_int, n_top = train.bags.lengths[0].tolist()  # row 0: its interests, then its item's topics
    values = train.bags.values[: n_int + n_top].tolist()
    assert [vocab["interests"][i - 1] for i in values[:n_int]] == frame["interests"][0].split("|")
    assert [vocab["item_topics"][i - 1] for i in values[n_int:]] == frame["item_topics"][0].split("|")
    assert train.weights.shape == (len(train),) and set(train.weights.unique().tolist()) <= {0.25, 1.0}
    assert train.users is not None and train.mask is None

    torch.manual_seed(0)
    model = WithFeatures(FeatureEmbedding(data.feature_schema(8)), MMoE(data.feature_schema(8).output_dim, 5, 3, (16,),
                                                                        (8,)))
    batch = next(train.batches(64, generator=torch.Generator().manual_seed(0)))
    out = model(batch.sparse, batch.dense, batch.bags)
    assert out.shape == (64, 5)
    losses = MultiTaskLoss(["binary"] * 5)(model.task_logits(out), batch.labels, batch.mask, batch.weights)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and model.features.table.grad.abs().sum() > 0
