"""A recsys-shaped generator: users, items, impressions, and the label structure of a feed.

Each impression (a user, an item, a device, a time) gets:

- ``click`` ~ Bernoulli(sigmoid(b + u_user . v_item + user bias + item bias + interest match +
  heavy boost)): about 7 % positive overall;
- after a click, ``like`` (~14 % of clicks), ``comment``, ``share`` and ``conversion`` (~4-6 %),
  each from its own mix of the click factors and task-specific ones (so the tasks are related
  but not alike) -> about 1 %, 0.4 %, 0.3 % and 0.4 % of impressions at seed 0: the sparse
  positives of real feeds, and the funnel click -> conversion;
- ``watch_time`` (seconds, log-normal, 0 without a click): a regression target, or the
  positive weight of a watch-time weighted click loss.

Users differ in their bias (standard deviation 1 on the logit scale), so a model that only
learns who clicks a lot has a high AUC and a low uAUC. A group of heavy users (5 %) sees 5x more
impressions and has every logit raised by 1: ``heavy`` marks them and ``sample_weight`` (0.25
for them, else 1) is the down-weighting one applies in practice. Features: ``user_id``,
``item_id``, ``category``, ``device``, ``heavy`` (sparse), ``interests`` (the user's 1-4 topics,
multi-value ``"t3|t17"``), ``item_topics`` (1-2 topics, multi-value), ``item_popularity`` and
``user_activity`` (dense, log-scaled counts), ``timestamp`` (the split is by time, 80/10/10).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mtlkernels.data.errors import DataError
from mtlkernels.data.frames import MultiTaskData, load_frame
from mtlkernels.data.schema import DataSchema, MultiValueField, Split, Task

TASKS = ("click", "like", "comment", "share", "conversion")
#: logit intercepts of click and of each post-click action given a click
BASE = {"click": -3.6, "like": -3.0, "comment": -4.0, "share": -4.3, "conversion": -4.0}
HEAVY_SHARE, HEAVY_IMPRESSIONS, HEAVY_BOOST, HEAVY_WEIGHT = 0.05, 5.0, 1.0, 0.25
FACTORS, TOPICS, CATEGORIES = 8, 40, 20


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def recsys_frame(rows: int = 200_000, *, users: int = 5_000, items: int = 2_000, seed: int = 0) -> pd.DataFrame:
    """One row per impression, sorted by time; deterministic for a seed."""
    if rows < 1 or users < 2 or items < 2 or seed < 0:
        raise DataError(f"recsys generator: rows >= 1, users >= 2, items >= 2, seed >= 0 needed, got {rows}, "
                        f"{users}, {items}, {seed}")
    rng = np.random.default_rng(seed)
    heavy = rng.random(users) < HEAVY_SHARE
    user_f = rng.standard_normal((users, FACTORS)) / np.sqrt(FACTORS)
    item_f = rng.standard_normal((items, FACTORS)) / np.sqrt(FACTORS) * 1.5
    user_bias = rng.standard_normal(users)
    item_bias = 0.5 * rng.standard_normal(items)
    category = rng.integers(0, CATEGORIES, items)
    n_interest = rng.integers(1, 5, users)
    interests = [rng.choice(TOPICS, k, replace=False) for k in n_interest]
    n_topic = rng.integers(1, 3, items)
    topics = [rng.choice(TOPICS, k, replace=False) for k in n_topic]
    interest_mat = np.zeros((users, TOPICS), bool)
    for u, t in enumerate(interests):
        interest_mat[u, t] = True
    topic_mat = np.zeros((items, TOPICS), bool)
    for i, t in enumerate(topics):
        topic_mat[i, t] = True

    activity = np.where(heavy, HEAVY_IMPRESSIONS, 1.0)
    user = rng.choice(users, rows, p=activity / activity.sum())
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    item = rng.permutation(items)[rng.choice(items, rows, p=popularity / popularity.sum())]
    device = rng.integers(0, 3, rows)
    timestamp = np.sort(rng.uniform(0, 30 * 86400, rows)).astype(np.int64)

    match = (interest_mat[user] & topic_mat[item]).any(1).astype(float)
    affinity = (user_f[user] * item_f[item]).sum(1)
    common = user_bias[user] + item_bias[item] + 0.8 * match + HEAVY_BOOST * heavy[user] + 0.2 * (device == 0)
    click = rng.random(rows) < _sigmoid(BASE["click"] + common + affinity)
    out = {"click": click}
    for t, mix in (("like", 0.8), ("comment", 0.5), ("share", 0.6), ("conversion", 0.4)):
        own = rng.standard_normal((items, FACTORS)) / np.sqrt(FACTORS) * 1.5
        score = mix * affinity + (1 - mix) * (user_f[user] * own[item]).sum(1) * 2
        p = _sigmoid(BASE[t] + 0.5 * common + score)
        out[t] = click & (rng.random(rows) < p)
    watch = np.where(click, np.exp(3.0 + 0.5 * affinity + 0.5 * rng.standard_normal(rows)), 0.0)

    seen_user = np.bincount(user, minlength=users)
    seen_item = np.bincount(item, minlength=items)
    topic_names = np.array([f"t{j}" for j in range(TOPICS)], dtype=object)
    interest_str = np.array(["|".join(topic_names[t]) for t in interests], dtype=object)
    topic_str = np.array(["|".join(topic_names[t]) for t in topics], dtype=object)
    frame = pd.DataFrame({
        "user_id": user, "item_id": item, "category": category[item], "device": device,
        "heavy": heavy[user].astype(np.int64), "interests": interest_str[user], "item_topics": topic_str[item],
        "item_popularity": np.log1p(seen_item[item]), "user_activity": np.log1p(seen_user[user]),
        "timestamp": timestamp, "sample_weight": np.where(heavy[user], HEAVY_WEIGHT, 1.0),
        "watch_time": np.round(watch, 1)})
    for t in TASKS:
        frame[t] = out[t].astype(np.int64)
    return frame


def recsys_schema(*, weighted: bool = True) -> DataSchema:
    """Five binary tasks (``like``, ``comment``, ``share``, ``conversion`` on the entire space
    after ``click``), the heavy-user down-weighting as sample weight (``weighted``), time split."""
    return DataSchema(
        tasks=(Task("click"),) + tuple(Task(t, after="click") for t in TASKS[1:]),
        sparse=("user_id", "item_id", "category", "device", "heavy"),
        multi_value=(MultiValueField("interests"), MultiValueField("item_topics")),
        dense=("item_popularity", "user_activity"), user="user_id",
        weight="sample_weight" if weighted else None, split=Split("time", "timestamp"))


def recsys(rows: int = 200_000, *, seed: int = 0, weighted: bool = True, **kwargs) -> MultiTaskData:
    """``recsys_frame`` through the data path with ``recsys_schema``."""
    return load_frame(recsys_frame(rows, seed=seed, **kwargs), recsys_schema(weighted=weighted),
                      name="recsys generator")
