"""Overhead of the training loop: samples/s of ``Trainer``'s loop (batches gathered by index,
the step through ``method.backward``, optimiser, the weight average, loss bookkeeping,
diagnostics every 100 steps, the progress bar) against the model's forward + backward +
optimiser step alone on the same pre-gathered batches, side by side in one run (interleaved
medians). Census group 1, MMoE at the default settings, EW.

    .venv/bin/python bench/train_loop_bench.py [--threads 1] [--steps 40] [--reps 5]
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import ensure_steady_malloc, interleaved_medians  # noqa: E402

from mtlkernels.config import TrainConfig  # noqa: E402
from mtlkernels.data import MultiTaskData, census  # noqa: E402
from mtlkernels.train import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--system-malloc", action="store_true")
    args = p.parse_args()
    ensure_steady_malloc(args.system_malloc)
    torch.set_num_threads(args.threads)
    full = census.load(1)
    rows = args.steps * args.batch_size
    part = full.train.take(torch.arange(rows))
    data = MultiTaskData(full.schema, full.preprocessor, {"train": part, "valid": full.valid, "test": full.test})
    cfg = TrainConfig(threads=args.threads, batch_size=args.batch_size, progress=True)
    trainer = Trainer(cfg, data)
    from tqdm.auto import tqdm

    sink = io.StringIO()
    bar = lambda **kw: tqdm(unit="batch", file=sink, mininterval=0.1, **kw)  # noqa: E731

    def loop():
        trainer.position["step"] = 0
        trainer.acc = trainer._new_acc()
        trainer._train_epoch(bar)

    batches = list(part.batches(args.batch_size, generator=torch.Generator().manual_seed(0)))
    model, opt = trainer.model, trainer.optimizer

    def alone():
        for b in batches:
            model.train()
            out = model(b.sparse, b.dense, b.bags)
            losses = trainer.loss_fn(model.task_logits(out), b.labels, b.mask, b.weights)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()

    t = interleaved_medians({"loop": loop, "alone": alone}, reps=args.reps, warmup=1)
    print(f"Census MMoE (defaults), batch {args.batch_size}, {args.steps} steps, {args.threads} thread(s), "
          f"median of {args.reps} interleaved runs")
    print(f"  model fwd+bwd+Adam alone : {rows / t['alone']:10,.0f} samples/s")
    print(f"  Trainer loop (EW, EMA)   : {rows / t['loop']:10,.0f} samples/s")
    print(f"  loop / alone time        : {t['loop'] / t['alone']:.3f}x  (bar: <= 1.2x)")


if __name__ == "__main__":
    main()
