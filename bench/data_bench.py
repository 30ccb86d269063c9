"""Prints whether the data path can feed training: the samples/s of iterating
``TabularData.batches`` over a training split (shuffled, as training does) against the
samples/s of an MMoE forward+backward on the same batches, and the time of a cached
``census.load()``.

    python bench/data_bench.py [--reps 5] [--threads 1] [--system-malloc]

Data: the Census training split (199,523 rows; 32 single-valued fields, 7 dense columns) and
the recsys generator at the same training size (5 single-valued fields, 2 bag fields, 2 dense).
Model: ``WithFeatures(FeatureEmbedding(data.feature_schema(16)), MMoE(...))`` with 8 experts of
(256, 128) and towers (64,) (the "census" configuration of bench/models_table.py), a
MultiTaskLoss on ``task_logits``, forward+backward. "loader / model" above 1 means one thread
gathers batches faster than it trains on them. Medians of interleaved runs (bench/_timing.py).
The Census cache is the user cache (``$MTLK_CACHE_DIR`` or the platform's); a cold cache is
filled first, and that first load is timed once.
"""
from __future__ import annotations

import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the repository root, for an uninstalled checkout
from _timing import interleaved_medians, table_main  # noqa: E402

from mtlkernels.data import cache, census, recsys  # noqa: E402
from mtlkernels.losses import MultiTaskLoss  # noqa: E402
from mtlkernels.nn import MMoE  # noqa: E402
from mtlkernels.nn.features import FeatureEmbedding, WithFeatures  # noqa: E402

BATCHES = (1024, 4096)
#: recsys rows whose 80 % training split has the Census training size
RECSYS_ROWS = 249_404


def model_for(data) -> WithFeatures:
    torch.manual_seed(0)
    schema = data.feature_schema(16)
    return WithFeatures(FeatureEmbedding(schema), MMoE(schema.output_dim, data.train.num_tasks, 8, (256, 128), (64,)))


def epoch(split, batch_size: int, seed: int = 0) -> None:
    for _ in split.batches(batch_size, generator=torch.Generator().manual_seed(seed)):
        pass


def training_step(model, loss_fn, batch) -> None:
    out = model(batch.sparse, batch.dense, batch.bags)
    loss_fn(model.task_logits(out), batch.labels, batch.mask, batch.weights).sum().backward()
    for p in model.parameters():
        p.grad = None


def run(reps: int, threads: int, allocator: str) -> None:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    first = census.load(1)
    first_s = time.perf_counter() - t0
    cached = interleaved_medians({"load": lambda: census.load(1)}, reps=reps, warmup=1)["load"]
    feed = recsys.recsys(RECSYS_ROWS)
    print(f"mtlkernels data path, torch {torch.__version__}, {threads} thread(s), medians of {reps} interleaved runs")
    print(f"allocator: {allocator}")
    print(f"census.load(): first call in this run {first_s:.2f} s, cached {cached * 1e3:.0f} ms "
          f"(cache: {cache.cache_dir()})\n")
    print("| data | batch | loader samples/s | MMoE fwd+bwd samples/s | loader / model |")
    print("|---|---|---|---|---|")
    for name, data in (("census (no bags)", first), ("recsys (2 bag fields)", feed)):
        model = model_for(data)
        loss_fn = MultiTaskLoss(["binary"] * data.train.num_tasks)
        n = len(data.train)
        for bs in BATCHES:
            batch = next(data.train.batches(bs, generator=torch.Generator().manual_seed(1)))
            t = interleaved_medians({"epoch": lambda: epoch(data.train, bs),
                                     "step": lambda: training_step(model, loss_fn, batch)}, reps=reps, warmup=1)
            loader, trained = n / t["epoch"], bs / t["step"]
            print(f"| {name} | {bs} | {loader:,.0f} | {trained:,.0f} | {loader / trained:.1f}x |")


if __name__ == "__main__":
    table_main(__doc__, run, reps=5)
