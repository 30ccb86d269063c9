"""The weight average (``mtlkernels.weight_average``): its recursion, and the Trainer scoring,
saving and reloading the averaged weights."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mtlkernels.scoring import evaluate_run
from mtlkernels.train import Trainer, read_checkpoint
from mtlkernels.weight_average import WeightAverage

from .test_trainer import config


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def ema(history, decay):
    """The average of a list of per-step weight lists, by the documented recursion."""
    expect = history[0]
    for n, current in enumerate(history[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expect = [d * e + (1 - d) * c for e, c in zip(expect, current)]
    return expect


def test_the_decay_warms_up_to_its_cap():
    avg = WeightAverage(Scaled(), 0.998)
    assert avg.step_decay(1) == pytest.approx(2 / 11)
    assert avg.step_decay(100) == pytest.approx(101 / 110)
    assert avg.step_decay(10_000) == 0.998


def test_the_average_follows_the_ema_recursion_from_the_first_update():
    torch.manual_seed(0)
    model, decay = Scaled(), 0.15  # the cap from the first update on: (1 + 1) / (10 + 1) > 0.15
    avg = WeightAverage(model, decay)
    assert avg.steps == 0 and avg.model(model) is model  # nothing averaged yet: the model itself
    history = []
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.scale.mul_(2)
            model.count.add_(1)
        avg.update(model)
        history.append([p.detach().clone() for p in model.parameters()])
    expect = [history[0][i] * decay ** 4 + sum((1 - decay) * decay ** (4 - k) * history[k][i] for k in range(1, 5))
              for i in range(len(history[0]))]
    torch.testing.assert_close(ema(history, decay), expect)
    averaged = avg.model(model)
    assert avg.steps == 5 and averaged is not model
    for got, want in zip(averaged.parameters(), expect):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # buffers are the trained model's, integers included, never averaged
    assert torch.equal(averaged.scale, model.scale) and int(averaged.count) == 5


def test_restored_average_continues_exactly():
    torch.manual_seed(0)
    a, b = Scaled(), Scaled()
    b.load_state_dict(a.state_dict())
    first, second = WeightAverage(a, 0.5), WeightAverage(b, 0.5)
    for _ in range(3):
        with torch.no_grad():
            a.lin.weight.add_(1.0)
        first.update(a)
    second.load(first.model(a).state_dict(), first.steps)
    b.load_state_dict(a.state_dict())
    for m, avg in ((a, first), (b, second)):
        with torch.no_grad():
            m.lin.weight.mul_(3.0)
        avg.update(m)
    assert torch.equal(first.model(a).lin.weight, second.model(b).lin.weight)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(Scaled(), decay)


def test_trainer_scores_and_saves_the_average_of_its_steps(tmp_path, monkeypatch):
    """The best checkpoint's model is the EMA of the weights after each optimiser step; the
    trained weights sit beside it; evaluation (the final report, `mtlkernels evaluate`) scores
    the average."""
    decay = 0.9
    seen = []
    step = Trainer.step

    def recording_step(self, b):
        out = step(self, b)
        seen.append([p.detach().clone() for p in self.model.parameters()])
        return out

    monkeypatch.setattr(Trainer, "step", recording_step)
    run = str(tmp_path / "run")
    t = Trainer(config(epochs=1, ema_decay=decay, lr=0.01), run_dir=run)
    m = t.fit()
    expect = ema(seen, decay)
    best = read_checkpoint(run, "best")
    assert best["average_steps"] == len(seen)
    names = [n for n, _ in t.model.named_parameters()]
    for n, want in zip(names, expect):
        torch.testing.assert_close(best["model"][n], want, rtol=1e-5, atol=1e-6)
    for n, trained in zip(names, seen[-1]):
        assert torch.equal(best["trained_model"][n], trained)
    assert any(not torch.equal(best["model"][n], best["trained_model"][n]) for n in names)
    for n, p in t.model.named_parameters():  # the trainer ends holding the scored (averaged) weights
        assert torch.equal(p, best["model"][n])
    ev = evaluate_run(run)
    for task in m["tasks"]:
        assert ev["metrics"][task]["auc"] == pytest.approx(m["final"]["test"][task]["auc"], abs=1e-12, nan_ok=True)


def test_without_averaging_the_checkpoint_holds_the_trained_weights(tmp_path):
    run = str(tmp_path / "run")
    t = Trainer(config(epochs=1, ema_decay=0.0), run_dir=run)
    t.fit()
    last = read_checkpoint(run, "last")
    assert last["trained_model"] is None and last["average_steps"] == 0
    assert t.average is None
    assert os.path.exists(os.path.join(run, "checkpoints", "best.pt"))


def test_averaging_changes_the_scores_of_the_same_training():
    """Same seed, same batches and steps: only the scored weights differ."""
    averaged = Trainer(config(epochs=1, ema_decay=0.9)).fit()
    last = Trainer(config(epochs=1, ema_decay=0.0)).fit()
    assert averaged["epochs"][0]["train"] == last["epochs"][0]["train"]  # training itself is untouched
    assert averaged["final"]["test"] != last["final"]["test"]
