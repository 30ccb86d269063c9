"""The Trainer: every model and method trains, determinism, exact resume after Ctrl-C, the run
directory, diagnostics, early stopping."""
from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch

from mtlkernels.build import METHODS, ConfigError
from mtlkernels.config import TrainConfig
from mtlkernels.train import Trainer, load_data

SMALL = dict(data="recsys", data_options={"rows": 3000}, epochs=2, batch_size=256, progress=False,
             embedding_dim=4, experts=3, expert_hidden=[16, 8], tower_hidden=[8], bottom_hidden=[16, 8],
             task_experts=1, shared_experts=2, diagnostics_every=4)
TIMING = ("train_seconds", "samples_per_second")


def config(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**SMALL, **kw})


def without_timing(m):
    m = json.loads(json.dumps(m))
    for e in m["epochs"]:
        for k in TIMING:
            e.pop(k)
    return m


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_reports(method, tmp_path):
    m = Trainer(config(method=method, epochs=1), run_dir=str(tmp_path)).fit()
    test = m["final"]["test"]
    assert set(m["tasks"]) == {"click", "like", "comment", "share", "conversion"}
    for t in m["tasks"]:
        assert 0 <= test[t]["auc"] <= 1 or math.isnan(test[t]["auc"])
        assert math.isfinite(test[t]["logloss"])
    assert all(math.isfinite(w) for w in m["epochs"][0]["weights"])
    for f in ("config.toml", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt",
              "plots/loss.png", "plots/auc.png", "plots/task_weights.png", "plots/gradient_cosine.png",
              "plots/calibration.png"):
        assert os.path.getsize(tmp_path / f) > 0, f


@pytest.mark.parametrize("model,tasks", [("shared-bottom", []), ("omoe", []), ("mmoe", []), ("cgc", []), ("ple", []),
                                         ("dselect-k", []), ("pepnet", []), ("esmm", ["click", "conversion"]), ("esm2", ["click", "like", "conversion"]),
                                         ("aitm", ["click", "conversion"])])
def test_every_model_trains(model, tasks):
    m = Trainer(config(model=model, tasks=tasks, epochs=1)).fit()
    assert m["tasks"] == (tasks or m["tasks"])
    assert all(math.isfinite(m["final"]["valid"][t]["loss"]) for t in m["tasks"])


@pytest.mark.parametrize("settings", [dict(model="pepnet", gate_fields=["user_id", "item_id"], domain_fields=["heavy"]),
                                      dict(model="pepnet", gate_fields=["interests"], gate_hidden=4),
                                      dict(model="mmoe", gate_fields=["user_id"]),
                                      dict(model="ple", gate_fields=["user_id", "device"])],
                         ids=["pepnet", "bag-gate", "mmoe", "ple"])
def test_personalised_gates_train(settings):
    t = Trainer(config(epochs=1, **settings))
    inner = t.model.model
    m = t.fit()
    assert all(math.isfinite(m["final"]["valid"][k]["loss"]) for k in m["tasks"])
    gates = {"pepnet": lambda: inner.task_gates, "mmoe": lambda: inner.expert_gates,
             "ple": lambda: inner.levels[0].expert_gate_nus}[settings["model"]]()
    assert any(torch.count_nonzero(net.layers[-1].weight) for net in gates.nets)  # the gates learned
    if settings.get("domain_fields"):
        assert inner.epnet is not None and inner.domain_columns.numel() == 4  # one embedding slot


@pytest.mark.parametrize("fields,match", [(["age"], "--gate-fields: 'age' is not a feature"),
                                          (["user_activity"], "--gate-fields: 'user_activity' is a dense column")])
def test_gate_fields_must_be_embedded_fields_of_the_data(fields, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(config(model="pepnet", gate_fields=fields))
    with pytest.raises(ConfigError, match=match):
        Trainer(config(model="mmoe", gate_fields=fields))


def test_pepnet_needs_an_embedded_field_for_its_gates():
    with pytest.raises(ConfigError, match="--model pepnet: the data has no sparse or bag field to feed its gates"):
        Trainer(config(data="synthetic", data_options={"rows": 1000}, model="pepnet"))


def test_dselect_k_refuses_more_selected_experts_than_experts():
    with pytest.raises(ConfigError, match="--dselect-k 5: more selected experts than --experts 4"):
        Trainer(config(model="dselect-k", experts=4, dselect_k=5))


def test_entire_space_models_refuse_data_without_their_funnel():
    with pytest.raises(ConfigError, match="esmm needs 2 tasks"):
        Trainer(config(model="esmm"))
    with pytest.raises(ConfigError, match="esm2 needs 3 tasks"):
        Trainer(config(model="esm2", tasks=["click", "conversion"]))


def test_same_seed_same_run_other_seed_other_run():
    a = without_timing(Trainer(config(dropout=0.1, method="pcgrad")).fit())
    b = without_timing(Trainer(config(dropout=0.1, method="pcgrad")).fit())
    c = without_timing(Trainer(config(dropout=0.1, method="pcgrad", seed=1)).fit())
    assert a == b
    assert a["final"] != c["final"]


@pytest.mark.parametrize("method,stop_at,ema_decay", [("pcgrad", 5, 0.998), ("dwa", 12, 0.9), ("gradnorm", 16, 0.998),
                                                      ("uw", 1, 0.998), ("famo", 7, 0.998), ("nash-mtl", 9, 0.998),
                                                      ("pcgrad", 5, 0.0), ("ew", 12, 0.0)])
def test_ctrl_c_then_resume_is_bit_exact(method, stop_at, ema_decay, tmp_path, monkeypatch):
    """An interrupted run (a real SIGINT in the middle of a step) resumed from its last
    checkpoint ends with exactly the metrics and weights of an uninterrupted run, with and
    without the weight average."""
    cfg = config(method=method, dropout=0.1, epochs=3, ema_decay=ema_decay)
    full = Trainer(cfg, run_dir=str(tmp_path / "full"))
    reference = without_timing(full.fit())

    step = Trainer.step

    def interrupting_step(self, b):
        out = step(self, b)
        if self.position["global_step"] + 1 == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "step", interrupting_step)
    run = str(tmp_path / "cut")
    m = Trainer(cfg, run_dir=run).fit()
    assert m["interrupted"] is True
    assert json.load(open(os.path.join(run, "metrics.json")))["interrupted"] is True
    monkeypatch.setattr(Trainer, "step", step)
    resumed = Trainer.resume(run)
    assert resumed.position["global_step"] == stop_at
    final = without_timing(resumed.fit())
    assert final["final"] == reference["final"]
    assert final["epochs"] == reference["epochs"]
    assert final["diagnostics"] == reference["diagnostics"]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_a_finished_run_does_not_resume(tmp_path):
    Trainer(config(epochs=1), run_dir=str(tmp_path)).fit()
    with pytest.raises(ConfigError, match="finished"):
        Trainer.resume(str(tmp_path))


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    Trainer(config(epochs=1), run_dir=str(tmp_path)).fit()
    path = tmp_path / "checkpoints" / "last.pt"
    s = torch.load(path, weights_only=False)
    s["format"] = 1  # before the weight average: its "model" was the trained weights
    torch.save(s, path)
    with pytest.raises(ConfigError, match="checkpoint format 1, this mtlkernels reads 2"):
        Trainer.resume(str(tmp_path))


def test_diagnostics_are_cosines_of_the_task_gradients():
    for method in ("ew", "mgda"):
        t = Trainer(config(method=method, epochs=1, diagnostics_every=3))
        m = t.fit()
        diag = m["diagnostics"]
        assert [d["step"] for d in diag] == list(range(3, 3 * len(diag) + 1, 3)) and diag
        for d in diag:
            cos = torch.tensor(d["cosine"])
            assert cos.shape == (5, 5)
            torch.testing.assert_close(torch.diagonal(cos), torch.ones(5), atol=1e-6, rtol=0)
            assert torch.all(cos.abs() <= 1) and torch.equal(cos, cos.T)


def test_ew_diagnostic_gram_matches_the_per_task_gradients():
    t = Trainer(config(epochs=1, diagnostics_every=1))
    b = next(t.data.train.batches(64))
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in t.model.state_dict().items()}
    losses, weights, logits, G = t.step(b)
    t.model.load_state_dict(state)
    t.model.train()
    torch.manual_seed(0)
    out = t.model(b.sparse, b.dense, b.bags)
    per_task = t.loss_fn(t.model.task_logits(out), b.labels, b.mask, b.weights)
    params = list(t.model.shared_parameters())
    J = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(per_task[k], params, retain_graph=True,
                                                                           allow_unused=False)])
                     for k in range(5)]).double()
    torch.testing.assert_close(G, J @ J.T, rtol=1e-5, atol=1e-12)


def test_early_stopping_stops_after_patience_bad_epochs():
    m = Trainer(config(epochs=8, patience=0, lr=0.05)).fit()
    scores = [e["monitor"] for e in m["epochs"]]
    best = max(range(len(scores)), key=scores.__getitem__)
    assert m["best"]["epoch"] == best + 1
    if len(scores) < 8:  # stopped early: the epoch after the best one did not improve
        assert len(scores) == best + 2 and scores[-1] <= scores[best]


def test_regression_tasks_use_mse_and_the_loss_monitor(tmp_path):
    m = Trainer(TrainConfig(data="synthetic", data_options={"rows": 2000}, epochs=2, progress=False,
                            expert_hidden=[16], tower_hidden=[8], experts=2), run_dir=str(tmp_path)).fit()
    assert m["monitor"] == "mean_loss"
    assert set(m["final"]["test"]["y1"]) >= {"mse", "loss"}
    assert os.path.getsize(tmp_path / "plots" / "mse.png") > 0


def test_single_task_baseline_keeps_one_task():
    m = Trainer(config(tasks=["like"], epochs=1)).fit()
    assert m["tasks"] == ["like"]
    assert not m["diagnostics"]


def test_bad_monitor_and_tasks():
    with pytest.raises(ConfigError, match="monitor must be"):
        Trainer(config(monitor="ctr"))
    with pytest.raises(ValueError, match="tasks"):
        load_data(config(tasks=["nope"]))


def test_last_checkpoint_keeps_the_last_weights_and_final_scores_the_best(tmp_path):
    t = Trainer(config(epochs=4, patience=4, lr=0.05), run_dir=str(tmp_path))
    m = t.fit()
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["model"]
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert m["best"]["epoch"] is not None
    for k, v in t.model.state_dict().items():  # the trainer ends holding the best weights
        assert torch.equal(v, best[k])
    if m["best"]["epoch"] != len(m["epochs"]):
        assert any(not torch.equal(last[k], best[k]) for k in best)


def test_epoch_training_loss_weighs_each_task_by_its_observed_rows():
    """The epoch's training loss of a masked task is the mean over its observed rows, as one
    batch holding the whole epoch would give."""
    t = Trainer(config(tasks=["click", "conversion"], epochs=1, lr=1e-12))
    t.data = t.data.select_tasks(["click", "conversion"])
    train = t.data.train
    mask = torch.rand(len(train), 2) < 0.5
    mask[:, 0] = True
    train.mask = mask
    m = t.fit()
    logits, _ = t.predict(train)  # lr ~0: the weights did not move, so the epoch saw these logits
    expect = t.loss_fn(logits, train.labels, train.mask, train.weights)
    got = torch.tensor([m["epochs"][0]["train"][n]["loss"] for n in ("click", "conversion")], dtype=torch.float64)
    torch.testing.assert_close(got, expect.double(), rtol=1e-4, atol=0)


def test_aitm_calibrates_only_a_funnel():
    """AITM's calibrator assumes a later funnel step is never likelier; on tasks that are not a
    funnel (like before click) it is off, the information transfer stays."""
    funnel = Trainer(config(model="aitm", tasks=["click", "conversion"]))
    other = Trainer(config(model="aitm", tasks=["like", "click"]))
    assert funnel.model.model.calibrator_alpha == 0.6
    assert other.model.model.calibrator_alpha == 0.0
    m = other.fit()
    assert m["tasks"] == ["like", "click"]


def test_gradnorm_balances_at_a_shared_layer_of_every_ple():
    """GradNorm's layer is shared: the last level's shared experts, or the embeddings when a PLE
    has no shared expert (every expert of such a PLE is task specific)."""
    from mtlkernels import nn as mnn
    from mtlkernels.build import gradnorm_layer

    features = mnn.FeatureEmbedding(mnn.FeatureSchema(sparse=(mnn.SparseField("a", 5),), embedding_dim=4))
    for shared in (2, 0):
        model = mnn.WithFeatures(features, mnn.PLE(4, 2, [1, 2], shared, (6,), (3,), num_levels=2))
        chosen = {id(p) for p in gradnorm_layer(model)}
        assert chosen <= {id(p) for p in model.shared_parameters()}
        if shared == 0:
            assert chosen == {id(features.table)}


def test_dselect_k_gate_settings_reach_the_model():
    t = Trainer(config(model="dselect-k", dselect_gates="static", dselect_entropy=0.1, epochs=1))
    model = t.model.model
    assert model.gates.z is not None and model.entropy_weight == 0.1  # static: one selection per task
    t = Trainer(config(model="dselect-k", epochs=1))
    assert t.model.model.gates.z is None and t.model.model.entropy_weight == 1e-6
