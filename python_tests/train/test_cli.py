"""`mtlkernels train / evaluate / compare` end to end, and one-line errors with exit status 2
for every bad flag, setting or file."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mtlkernels import cli
from mtlkernels.data import recsys

SMALL = ["--data", "recsys", "--epochs", "1", "--batch-size", "256", "--embedding-dim", "4", "--experts", "2",
         "--expert-hidden", "8", "--tower-hidden", "4", "--no-progress"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text('[data]\nrows = 2000\n')
    return str(path)


def one_line_error(capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        code = cli.main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    assert match in err.splitlines()[-1], err
    return err


@pytest.mark.parametrize("argv,match", [
    (["train", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "--batch-size", "x"], "--batch-size: expected an integer"),
    (["train", "--lr", "-1"], "--lr: must be a finite number > 0"),
    (["train", "--lr", "nan"], "--lr: must be a finite number > 0"),
    (["train", "--threads", "0"], "--threads: must be >= 1"),
    (["train", "--expert-hidden", "256,0"], "--expert-hidden: expected widths >= 1"),
    (["train", "--model", "transformer"], "model must be one of"),
    (["train", "--method", "magic"], "method must be one of"),
    (["train", "--optimizer", "lion"], "optimizer must be one of"),
    (["train", "--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["train", "--ema-decay", "1"], "ema-decay must be in [0, 1)"),
    (["train", "--ema-decay", "nan"], "ema-decay must be a finite number"),
    (["train", "--dselect-gates", "sparse"], "dselect-gates must be one of per-example, static"),
    (["train", "--dselect-entropy", "-1"], "dselect-entropy must be a finite number >= 0"),
    (["train", "--domain-fields", "heavy"], "domain-fields (EPNet) applies to --model pepnet, got --model mmoe"),
    (["train", "--model", "dselect-k", "--gate-fields", "user_id"], "gate-fields applies to --model pepnet, mmoe"),
    (["train", "--model", "pepnet", "--gate-fields", "user_id,,item_id"], "--gate-fields: expected comma-separated"),
    (["train", "--gate-hidden", "8"], "gate-hidden applies to --model pepnet and to models with gate-fields"),
    (["train", "--data", "no/such/file.csv"], "no such file"),
    (["train", "--config", "no/such.toml"], "--config no/such.toml: no such file"),
    (["train", "--resume", "no/such/run"], "no last checkpoint"),
    (["demo", "--batch", "0"], "--batch: must be >= 1"),
    (["demo", "--reps", "0"], "--reps: must be >= 1"),
    (["demo", "--threads", "0"], "--threads: must be >= 1"),
    (["demo", "--experts", "0"], "--experts: must be >= 1"),
    (["demo", "--expert-dim", "0"], "--expert-dim: must be >= 1"),
    (["evaluate", "no/such/run"], "no best checkpoint"),
    (["compare", "no/such/run"], "no metrics.json"),
])
def test_bad_flags_end_in_one_line_and_exit_2(capsys, argv, match):
    one_line_error(capsys, argv, match)


def test_bad_settings_in_a_config_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    one_line_error(capsys, ["train", "--config", str(bad)], "unknown setting(s) ['epochz']")
    bad.write_text("epochs = [\n")
    one_line_error(capsys, ["train", "--config", str(bad)], "not valid TOML")
    bad.write_text('[data]\nrows = 500\ncolour = "red"\n')
    one_line_error(capsys, ["train", "--data", "recsys", "--config", str(bad)], "unknown option(s) ['colour']")


def test_a_file_without_a_schema_and_a_bad_file(capsys, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("click,item\n1,a\n0,b\n")
    one_line_error(capsys, ["train", "--data", str(csv)], "a file needs its schema")
    cfg = tmp_path / "schema.toml"
    cfg.write_text(f'[data]\npath = "{csv}"\nsparse = ["item", "user"]\ntasks = [{{ name = "click" }}]\n')
    one_line_error(capsys, ["train", "--config", str(cfg)], "column(s) ['user'] not found")
    csv.write_text("click,item\n1,a\n2,b\n")
    cfg.write_text(f'[data]\npath = "{csv}"\nsparse = ["item"]\ntasks = [{{ name = "click" }}]\n')
    one_line_error(capsys, ["train", "--config", str(cfg)], "label 2.0 at row 2 is not binary")


def test_a_run_that_fails_to_start_leaves_no_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "events.csv"
    csv.write_text("click,item\n1,a\n2,b\n")
    cfg = tmp_path / "schema.toml"
    cfg.write_text(f'[data]\npath = "{csv}"\nsparse = ["item"]\ntasks = [{{ name = "click" }}]\n')
    one_line_error(capsys, ["train", "--config", str(cfg)], "is not binary")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    kept = tmp_path / "mine"
    kept.mkdir()
    one_line_error(capsys, ["train", "--config", str(cfg), "--out", str(kept)], "is not binary")
    assert kept.is_dir()  # a directory the user made is left as it was


def test_model_data_mismatch(capsys, config, tmp_path):
    one_line_error(capsys, ["train", *SMALL, "--config", config, "--model", "esmm", "--out", str(tmp_path / "r")],
                   "esmm needs 2 tasks")


def test_train_evaluate_compare(capsys, config, tmp_path):
    run = str(tmp_path / "run")
    assert cli.main(["train", *SMALL, "--config", config, "--out", run]) == 0
    out = capsys.readouterr().out
    assert "test:" in out and "click" in out and "uauc" in out
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert cli.main(["evaluate", run, "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.load(open(tmp_path / "ev.json"))
    for t in m["tasks"]:
        assert ev["metrics"][t]["auc"] == pytest.approx(m["final"]["test"][t]["auc"], abs=1e-12, nan_ok=True)
    # per segment: the heavy users and the others partition the rows; each table is the metric of its rows
    assert cli.main(["evaluate", run, "--by", "heavy", "--json", str(tmp_path / "seg.json")]) == 0
    out = capsys.readouterr().out
    assert "heavy = 0 (" in out and "heavy = 1 (" in out
    seg = json.load(open(tmp_path / "seg.json"))["segments"]
    assert sorted(seg) == ["0", "1"] and sum(s["rows"] for s in seg.values()) == ev["metrics"]["click"]["rows"]
    assert seg["1"]["metrics"]["click"]["rows"] == seg["1"]["rows"]
    one_line_error(capsys, ["evaluate", run, "--by", "user_activity"], "--by user_activity: not a sparse field")
    one_line_error(capsys, ["evaluate", run, "--by", "user_id"], "a segment field may take at most 20")
    # again into the same directory: refused, it holds a run
    one_line_error(capsys, ["train", *SMALL, "--config", config, "--out", run], "already holds a run")
    run2 = str(tmp_path / "run2")
    assert cli.main(["train", *SMALL, "--config", config, "--out", run2, "--method", "pcgrad", "--seed", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["compare", run, run2]) == 0
    table = capsys.readouterr().out
    assert "run2" in table and "pcgrad" in table and "click" in table


def test_evaluate_a_run_on_another_file(capsys, tmp_path):
    """A CSV with multi-value, user and sample-weight columns trains an MMoE through the file path,
    and a saved run re-scores another file with its saved preprocessing."""
    frame = recsys.recsys_frame(3000, seed=3)
    train_csv, other_csv = tmp_path / "train.csv", tmp_path / "other.csv"
    frame.to_csv(train_csv, index=False)
    recsys.recsys_frame(1500, seed=4).to_csv(other_csv, index=False)
    cfg = tmp_path / "file.toml"
    cfg.write_text(f"""
model = "mmoe"
[data]
path = "{train_csv}"
sparse = ["item_id", "category", "device"]
multi_value = [{{ name = "interests", pooling = "mean" }}, {{ name = "item_topics", pooling = "sum" }}]
dense = ["item_popularity", "user_activity"]
user = "user_id"
weight = "sample_weight"
tasks = [{{ name = "click" }}, {{ name = "like", after = "click" }}]
split = {{ kind = "random", fractions = [0.8, 0.1, 0.1], seed = 1 }}
""")
    run = str(tmp_path / "run")
    assert cli.main(["train", "--config", str(cfg), "--epochs", "1", "--no-progress", "--out", run,
                     "--expert-hidden", "8", "--experts", "2", "--embedding-dim", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", run, "--data", str(other_csv)]) == 0
    out = capsys.readouterr().out
    assert str(other_csv) in out and "click" in out and "like" in out
    assert "1,500" in out  # every row of the other file scored


@pytest.mark.parametrize("toml,match", [
    ('epochs = "3"\n', "epochs must be an integer, got '3'"),
    ("expert_hidden = 5\n", "expert-hidden must be a list, got 5"),
    ('batch_norm = "false"\n', "batch-norm must be true or false"),
    ("weight_decay = true\n", "weight-decay must be a finite number"),
    ("seed = 4294967296\n", "seed must be at most"),
    ('[data]\nrows = "100"\n', "[data] rows must be an integer"),
    ("[data]\nrows = 5\n", "split(s) are empty"),
])
def test_settings_of_the_wrong_type(capsys, tmp_path, toml, match):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    one_line_error(capsys, ["train", "--data", "recsys", "--config", str(cfg), "--out", str(tmp_path / "r")], match)


def test_schema_of_the_wrong_type_and_an_unlearnable_task(capsys, tmp_path):
    csv = tmp_path / "e.csv"
    csv.write_text("click,item\n" + "".join(f"0,{'ab'[i % 2]}\n" for i in range(40)))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "{csv}"\nsparse = ["item"]\ntasks = [{{ name = "click", weight = "0.5" }}]\n')
    one_line_error(capsys, ["train", "--config", str(cfg)], "weight must be a finite number")
    cfg.write_text(f'[data]\npath = "{csv}"\nsparse = ["item"]\ntasks = [{{ name = "click" }}]\n')
    one_line_error(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "r")],
                   "column 'click': the training split has only the label 0")


def test_tasks_need_names(capsys):
    one_line_error(capsys, ["train", "--tasks", "income,"], "--tasks must be comma-separated task names")


def test_an_unusable_out_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(capsys, ["train", "--out", str(blocker / "run")], "cannot create the run directory")


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_a_nan_loss_stops_the_run_with_one_line_and_exit_1(capsys, config, tmp_path, monkeypatch, method):
    from mtlkernels.losses import MultiTaskLoss

    calls = {"n": 0}
    forward = MultiTaskLoss.__call__

    def poisoned(self, *args, **kwargs):
        losses = forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3 and losses.requires_grad:  # the third training step
            losses = losses * torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0])[:losses.shape[0]]
        return losses

    monkeypatch.setattr(MultiTaskLoss, "__call__", poisoned)
    code = cli.main(["train", *SMALL, "--config", config, "--method", method, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "epoch 1, step 3: losses of task(s) ['like']" in err and "held NaN or Inf" in err
