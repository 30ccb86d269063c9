"""The Trainer: a model, a balancing method and an optimiser trained on a ``MultiTaskData``,
evaluated every epoch, stopped early on the validation score, checkpointed to a run directory
that resumes bit-exactly.

Run directory::

    config.toml              the resolved settings
    metrics.json             per epoch (train and validation), diagnostics, best, final (valid, test)
    checkpoints/last.pt      model, optimiser, method state, RNG states, the trainer's position
    checkpoints/best.pt      the same at the best validation epoch (what ``final`` scores)
    plots/*.png              loss, AUC, task weights, gradient cosines, calibration

A checkpoint's ``model`` holds the weights the run scores: with ``ema_decay`` > 0 the moving
average of the trained weights (``mtlkernels.weight_average``), whose trained weights and update
count are kept beside it (``trained_model``, ``average_steps``) for ``--resume``.

Determinism: the batch order of epoch e is a permutation from a generator seeded with
``(seed, e)``; every other random draw (initialisation, dropout, task orders) comes from the
seeded global and method generators, whose states the checkpoint keeps. A run stopped at any
step (Ctrl-C: the step in progress completes, then ``last.pt`` and the report are written) and
resumed ends with the same metrics as an uninterrupted one, on the same number of threads.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkernels._types import check_value
from mtlkernels.balance import task_gradients
from mtlkernels.balance.base import GramMethod, shared_list
from mtlkernels.balance.blocks import SharedBlocks
from mtlkernels.build import (REPRESENTATION_METHODS, ConfigError, TrainingError, build_method, build_model,
                              check_model_fits)
from mtlkernels.config import TrainConfig
from mtlkernels.data import DataError, DataSchema, MultiTaskData, census, load_file, recsys, synthetic
from mtlkernels.data.table import TabularData
from mtlkernels.evaluation import monitor_value, task_metrics
from mtlkernels.losses import MultiTaskLoss
from mtlkernels.ops import gram
from mtlkernels.plots import write_plots
from mtlkernels.weight_average import WeightAverage

CHECKPOINT_FORMAT = 2
POSTFIX_EVERY = 25  # steps between progress-bar loss refreshes (each one reads the losses)


def load_data(config: TrainConfig) -> MultiTaskData:
    """The data a config names (``census``, ``census2``, ``synthetic``, ``recsys`` or a file),
    restricted to ``config.tasks`` when given."""
    opts = dict(config.data_options)
    name = config.data

    def take(allowed: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ConfigError(f"[data] for --data {name}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
        for k, v in opts.items():
            check_value(f"[data] {k}", v, allowed[k], ConfigError)
        return {k: opts.get(k, v) for k, v in allowed.items()}

    if name in ("census", "census2"):
        data = census.load(1 if name == "census" else 2, **take({"sample_weight": False}))
    elif name == "synthetic":
        data = synthetic.mmoe(**take({"rows": 30_000, "correlation": 0.5, "seed": 0}))
    elif name == "recsys":
        data = recsys.recsys(**take({"rows": 200_000, "seed": 0, "weighted": True}))
    else:
        if not os.path.exists(name):
            raise ConfigError(f"--data {name}: not one of census, census2, synthetic, recsys, and no such file")
        if "tasks" not in opts:
            raise ConfigError(f"--data {name}: a file needs its schema: a [data] table in --config with tasks, "
                              "sparse, dense, ... (see the README)")
        data = load_file(name, DataSchema.from_dict(opts), opts.get("format"))
    return data.select_tasks(list(config.tasks)) if config.tasks else data


def check_trainable(data: MultiTaskData) -> None:
    """Training needs rows in every split and both classes of each binary task in training."""
    empty = [k for k, v in data.splits.items() if len(v) == 0]
    if empty:
        raise DataError(f"{data.name}: the {' and '.join(empty)} split(s) are empty "
                        f"({', '.join(f'{k} {len(v):,}' for k, v in data.splits.items())} rows); give more rows or "
                        "other split fractions")
    train = data.train
    for k, t in enumerate(data.schema.tasks):
        y = train.labels[:, k] if train.mask is None else train.labels[train.mask[:, k], k]
        if t.kind == "binary" and (y.numel() == 0 or bool(y.min() == y.max())):
            what = "no observed label" if y.numel() == 0 else f"only the label {float(y[0]):g}"
            raise DataError(f"column {t.label_column!r}: the training split has {what} for binary task "
                            f"{t.name!r}; it cannot be learned")


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])


class Trainer:
    """``Trainer(config, data=None, run_dir=None).fit()`` trains and returns the final metrics.

    ``data`` defaults to ``load_data(config)``; ``run_dir`` (created if missing) receives the
    run directory's files, or nothing is written when it is None. ``Trainer.resume(run_dir)``
    continues a run from its ``last.pt``.
    """

    def __init__(self, config: TrainConfig, data: MultiTaskData | None = None, run_dir: str | None = None):
        self.config = c = config
        if c.threads:
            torch.set_num_threads(c.threads)
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed)
        self.data = data if data is not None else load_data(c)
        schema = self.data.schema
        self.names = schema.task_names
        self.kinds = [t.kind for t in schema.tasks]
        if c.monitor not in ("mean_auc", "mean_loss", *self.names):
            raise ConfigError(f"monitor must be mean_auc, mean_loss or a task of {self.names}, got {c.monitor!r}")
        self.monitor = "mean_loss" if c.monitor == "mean_auc" and "binary" not in self.kinds else c.monitor
        check_model_fits(c.model, schema)
        T = len(self.names)
        features = self.data.feature_schema(c.embedding_dim, dense_projection=c.dense_projection,
                                            dense_bins=c.dense_bins)
        self.model = build_model(c.model, features, schema, c.to_dict())
        if len(self.data.train):  # a stand-in without rows (scoring a saved run) loads the edges instead
            self.model.features.fit_dense_bins(self.data.train.dense)
        self.method = build_method(c.method, self.model, T, c.to_dict())
        self.average = WeightAverage(self.model, c.ema_decay) if c.ema_decay > 0 else None
        params = list(self.model.parameters()) + list(self.method.parameters())
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)
        else:
            cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
            self.optimizer = cls(params, lr=c.lr, weight_decay=c.weight_decay)
        self.loss_fn = MultiTaskLoss(self.kinds, [t.weight for t in schema.tasks])
        self.representation = c.method in REPRESENTATION_METHODS
        self.run_dir = run_dir
        self.position = {"epoch": 0, "step": 0, "global_step": 0, "best": -math.inf, "best_epoch": None,
                         "bad_epochs": 0, "finished": False}
        self.history: dict[str, Any] = {"epochs": [], "diagnostics": []}
        self.acc = self._new_acc()
        self.best_model: dict[str, Tensor] | None = None  # weights of the best validation epoch
        self._stop = False

    # ------------------------------------------------------------------ training
    def _new_acc(self) -> dict[str, Any]:
        T = len(self.names)
        return {"loss_sum": torch.zeros(T, dtype=torch.float64), "loss_weight": torch.zeros(T, dtype=torch.float64),
                "weight_sum": torch.zeros(T, dtype=torch.float64),
                "rows": 0, "steps": 0, "logits": [], "labels": [], "mask": [], "seconds": 0.0}

    def _forward(self, b: TabularData):
        out = self.model(b.sparse, b.dense, b.bags, return_representation=self.representation)
        rep = None
        if self.representation:
            out, rep = out
        logits = self.model.task_logits(out)
        losses = self.loss_fn(logits, b.labels, b.mask, b.weights)
        extra = self.model.extra_task_losses(out)
        return (losses if extra is None else losses + extra), logits, rep

    def step(self, b: TabularData) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One optimisation step on batch ``b``: (losses [T], task weights [T], logits, the
        task-gradient Gram of this step when it is a diagnostics step, else None)."""
        self.model.train()
        losses, logits, rep = self._forward(b)
        self.optimizer.zero_grad(set_to_none=True)
        every = self.config.diagnostics_every
        diagnose = every > 0 and (self.position["global_step"] + 1) % every == 0 and len(self.names) > 1
        G = None
        if diagnose and not isinstance(self.method, GramMethod):
            G = gram(task_gradients(losses, [rep]) if rep is not None else
                     SharedBlocks(losses, self.model, shared_list(self.model)).blocks)
        weights = self.method.backward(losses, shared=self.model, representation=rep)
        try:
            self.method.check_finite(self.names)
        except ValueError as exc:
            raise TrainingError(f"epoch {self.position['epoch'] + 1}, step {self.position['step'] + 1}: {exc} "
                                "(a smaller --lr may help; the checkpoints hold the last finished epoch)") from None
        self.optimizer.step()
        if hasattr(self.method, "after_step"):  # FAMO: the same batch's losses after the update
            with torch.no_grad():
                self.method.after_step(self._forward(b)[0])
        if self.average is not None:  # last: it copies the buffers this step's forwards left
            self.average.update(self.model)
        if diagnose and G is None:
            G = self.method.last_gram
        return losses.detach(), weights.detach(), logits.detach(), G

    def _record(self, b: TabularData, losses: Tensor, weights: Tensor, logits: Tensor, G: Tensor | None) -> None:
        a, n = self.acc, len(b)
        w = self.loss_fn.total_weight(b.labels, b.mask, b.weights)
        a["loss_sum"] += losses.double() * w
        a["loss_weight"] += w
        a["weight_sum"] += weights.double().cpu()
        a["rows"] += n
        a["steps"] += 1
        a["logits"].append(logits.float())
        a["labels"].append(b.labels)
        a["mask"].append(b.mask)
        if G is not None:
            d = torch.sqrt(torch.diagonal(G).clamp_min(1e-300))
            cos = (G / (d[:, None] * d[None, :])).clamp(-1, 1)
            self.history["diagnostics"].append({"step": self.position["global_step"] + 1, "epoch": self.position["epoch"] + 1,
                                                "weights": weights.double().tolist(), "cosine": cos.tolist()})

    def _train_epoch(self, bar_factory) -> bool:
        """Runs (the rest of) the current epoch; True if a stop was requested mid-epoch."""
        c, pos = self.config, self.position
        train = self.data.train
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + pos["epoch"])
        total = train.num_batches(c.batch_size)
        bar = bar_factory(total=total, initial=pos["step"], desc=f"epoch {pos['epoch'] + 1}/{c.epochs}")
        t0 = time.perf_counter()
        try:
            for b in train.batches(c.batch_size, generator=gen, start=pos["step"]):
                losses, weights, logits, G = self.step(b)
                self._record(b, losses, weights, logits, G)
                pos["step"] += 1
                pos["global_step"] += 1
                bar.update(1)
                if pos["step"] % POSTFIX_EVERY == 0 or pos["step"] == total:
                    elapsed = self.acc["seconds"] + time.perf_counter() - t0
                    mean = (self.acc["loss_sum"] / self.acc["loss_weight"].clamp_min(1e-300)).tolist()
                    bar.set_postfix_str(" ".join(f"{n} {v:.4f}" for n, v in zip(self.names, mean)) +
                                        f" | {self.acc['rows'] / max(elapsed, 1e-9):,.0f} samples/s", refresh=False)
                if self._stop and pos["step"] < total:
                    return True
        finally:
            self.acc["seconds"] += time.perf_counter() - t0
            bar.close()
        return False

    def _end_epoch(self) -> None:
        pos, a = self.position, self.acc
        if hasattr(self.method, "end_epoch"):
            self.method.end_epoch()
        train_logits = torch.cat(a["logits"])
        train_rows = TabularData(sparse=torch.zeros(len(train_logits), 0, dtype=torch.long),
                                 dense=torch.zeros(len(train_logits), 0), labels=torch.cat(a["labels"]),
                                 mask=None if a["mask"][0] is None else torch.cat(a["mask"]))
        train = task_metrics(train_logits, train_rows, self.kinds, self.names)
        train_loss = (a["loss_sum"] / a["loss_weight"].clamp_min(1e-300)).tolist()
        for n, v in zip(self.names, train_loss):
            train[n]["loss"] = v
        valid, valid_loss = self.evaluate(self.data.valid)
        score = monitor_value(self.monitor, valid, valid_loss)
        if math.isnan(score):
            raise DataError(f"monitor {self.monitor}: NaN on the validation split ({len(self.data.valid):,} rows): no "
                            "task has both classes there; give more validation rows or --monitor mean_loss")
        pos["epoch"] += 1
        entry = {"epoch": pos["epoch"], "train": train, "valid": valid, "monitor": score,
                 "weights": (a["weight_sum"] / a["steps"]).tolist(),
                 "train_seconds": a["seconds"], "samples_per_second": a["rows"] / max(a["seconds"], 1e-9)}
        self.history["epochs"].append(entry)
        self._log_epoch(entry)
        improved = score > pos["best"]
        if improved:
            pos["best"], pos["best_epoch"], pos["bad_epochs"] = score, pos["epoch"], 0
            self.best_model = {k: v.detach().clone() for k, v in self.scoring_model().state_dict().items()}
        else:
            pos["bad_epochs"] += 1
        pos["step"] = 0
        self.acc = self._new_acc()
        if pos["epoch"] >= self.config.epochs or pos["bad_epochs"] > self.config.patience:
            pos["finished"] = True
        if self.run_dir:
            if improved:
                self.save(self._ckpt("best"))
            self.save(self._ckpt("last"))
            self.write_metrics()

    def _log_epoch(self, e: dict[str, Any]) -> None:
        """One line per epoch: training losses, validation scores, speed."""
        def score(m):
            return f"AUC {m['auc']:.4f}" if "auc" in m else f"MSE {m['mse']:.4f}"

        tasks = "  ".join(f"{n} {e['train'][n]['loss']:.4f}/{score(e['valid'][n])}" for n in self.names)
        line = (f"epoch {e['epoch']}/{self.config.epochs}  loss/valid: {tasks}  | {self.monitor} "
                f"{e['monitor']:.4f} | {e['train_seconds']:.1f} s, {e['samples_per_second']:,.0f} samples/s")
        if self.config.progress:
            from tqdm.auto import tqdm

            tqdm.write(line)
        else:
            print(line, flush=True)

    def fit(self) -> dict[str, Any]:
        """Trains until ``epochs`` or early stopping, then scores the best epoch's model on the
        validation and test splits; returns the metrics dict (also ``metrics.json``). After a
        Ctrl-C, returns the report so far with ``"interrupted": True``."""
        from tqdm.auto import tqdm

        check_trainable(self.data)
        if self.run_dir:
            self._prepare_run_dir()
        bar_factory = lambda **kw: tqdm(unit="batch", dynamic_ncols=True, leave=False,  # noqa: E731
                                        disable=not self.config.progress, **kw)
        previous = self._install_interrupt_handler()
        try:
            while not self.position["finished"]:
                if self._train_epoch(bar_factory):
                    return self._interrupted()
                self._end_epoch()
                if self._stop and not self.position["finished"]:
                    return self._interrupted()
            return self._final()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _install_interrupt_handler(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self._stop = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

        return signal.signal(signal.SIGINT, handler)

    def _interrupted(self) -> dict[str, Any]:
        m = self.metrics()
        m["interrupted"] = True
        if self.run_dir:
            self.save(self._ckpt("last"))
            self.write_metrics(m)
        return m

    def _final(self) -> dict[str, Any]:
        if self.run_dir:  # last.pt keeps the last step's weights; the final scores are the best epoch's
            self.save(self._ckpt("last"))
        if self.best_model is not None:
            self.use_weights(self.best_model)
        final = {}
        for split in ("valid", "test"):
            final[split], losses = self.evaluate(self.data.splits[split], reliability=True)
            for n in self.names:
                final[split][n]["loss"] = losses[n]
        self.history["final"] = final
        m = self.metrics()
        if self.run_dir:
            self.write_metrics(m)
        return m

    # ------------------------------------------------------------------ evaluation
    def scoring_model(self) -> torch.nn.Module:
        """The model evaluation runs and checkpoints save: the weight average when ``ema_decay``
        > 0 (once a step has been taken), else the trained model."""
        return self.model if self.average is None else self.average.model(self.model)

    def use_weights(self, state: dict[str, Tensor]) -> None:
        """Scores with these weights from now on (a checkpoint's ``model``): loads them into
        the model and ends the weight averaging (training is over)."""
        self.model.load_state_dict(state)
        self.average = None

    @torch.no_grad()
    def predict(self, data: TabularData) -> tuple[Tensor, Tensor]:
        """(task logits ``[N, T]``, raw model outputs) of ``scoring_model()`` in evaluation mode,
        in order."""
        model = self.scoring_model()
        model.eval()
        outs = [model(b.sparse, b.dense, b.bags) for b in data.batches(self.config.eval_batch_size)]
        out = torch.cat(outs) if outs else torch.zeros(0, len(self.names))
        return model.task_logits(out), out

    def evaluate(self, data: TabularData, *, reliability: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
        """(per-task metrics, per-task losses as trained) on ``data``."""
        logits, out = self.predict(data)
        with torch.no_grad():
            losses = self.loss_fn(logits, data.labels, data.mask, data.weights)
            extra = self.scoring_model().extra_task_losses(out)
            if extra is not None:
                losses = losses + extra
        return (task_metrics(logits, data, self.kinds, self.names, reliability=reliability),
                dict(zip(self.names, losses.tolist())))

    # ------------------------------------------------------------------ run directory
    def metrics(self) -> dict[str, Any]:
        pos = self.position
        return {"config": self.config.to_dict(), "tasks": self.names, "kinds": self.kinds, "monitor": self.monitor,
                "data": self.data.report, "best": {"epoch": pos["best_epoch"], "value": pos["best"]},
                "epochs": self.history["epochs"], "diagnostics": self.history["diagnostics"],
                "final": self.history.get("final"), "interrupted": False}

    def _ckpt(self, which: str) -> str:
        return os.path.join(self.run_dir, "checkpoints", f"{which}.pt")

    def _prepare_run_dir(self) -> None:
        os.makedirs(os.path.join(self.run_dir, "checkpoints"), exist_ok=True)
        with open(os.path.join(self.run_dir, "config.toml"), "w") as f:
            f.write(self.config.to_toml())

    def write_metrics(self, m: dict[str, Any] | None = None) -> None:
        m = self.metrics() if m is None else m
        tmp = os.path.join(self.run_dir, "metrics.json.tmp")
        with open(tmp, "w") as f:
            json.dump(m, f, indent=1, allow_nan=True)
        os.replace(tmp, os.path.join(self.run_dir, "metrics.json"))
        write_plots(self.run_dir, m)

    def state_dict(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                "preprocessor": self.data.preprocessor.state_dict(), "tasks": self.names,
                "model": self.scoring_model().state_dict(),
                "trained_model": None if self.average is None else self.model.state_dict(),
                "average_steps": 0 if self.average is None else self.average.steps,
                "optimizer": self.optimizer.state_dict(),
                "method": self.method.state_dict(), "rng": _rng_state(), "position": dict(self.position),
                "history": self.history, "acc": self.acc}

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if self.average is None:
            self.model.load_state_dict(s["model"])
        else:
            self.model.load_state_dict(s["trained_model"])
            self.average.load(s["model"], s["average_steps"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.method.load_state_dict(s["method"])
        self.position, self.history, self.acc = dict(s["position"]), s["history"], s["acc"]
        _set_rng_state(s["rng"])

    @classmethod
    def resume(cls, run_dir: str, *, progress: bool | None = None) -> "Trainer":
        """The trainer of ``run_dir`` at its ``last.pt``; ``fit()`` continues it. The data is
        loaded again from the saved settings and must give the same preprocessing."""
        s = read_checkpoint(run_dir, "last")
        config = TrainConfig.from_dict(s["config"])
        if progress is not None:
            config = config.replace(progress=progress)
        data = load_data(config)
        if data.preprocessor.state_dict() != s["preprocessor"]:
            raise DataError(f"--resume {run_dir}: the data ({config.data}) no longer gives the preprocessing the "
                            "run started with (the file changed?)")
        t = cls(config, data, run_dir)
        t.load_state_dict(s)
        if t.position["best_epoch"] is not None:
            t.best_model = read_checkpoint(run_dir, "best")["model"]
        metrics_path = os.path.join(run_dir, "metrics.json")
        if t.position["finished"] and os.path.exists(metrics_path):
            with open(metrics_path) as f:
                if json.load(f).get("final") is not None:
                    raise ConfigError(f"--resume {run_dir}: the run has finished; nothing to resume")
        return t


def read_checkpoint(run_dir: str, which: str = "last") -> dict[str, Any]:
    path = os.path.join(run_dir, "checkpoints", f"{which}.pt")
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir}: no {which} checkpoint (checkpoints/{which}.pt); is it a run directory?")
    s = torch.load(path, weights_only=False)
    if s.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: checkpoint format {s.get('format')}, this mtlkernels reads {CHECKPOINT_FORMAT}")
    return s
