"""DSelect-k gates: the smooth step, selectors that binarise to one expert, at most k experts per
task, the regulariser, bad settings; the model itself is checked against its expert-by-expert
reference in test_models.py."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import nn as mnn
from mtlkernels.data import synthetic
from mtlkernels.nn.dselect import DSelectKGates, smooth_step


def test_smooth_step_is_0_then_a_cubic_then_1_with_a_continuous_slope():
    g = 2.0
    t = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0], dtype=torch.float64, requires_grad=True)
    s = smooth_step(t, g)
    assert s.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    (d,) = torch.autograd.grad(s.sum(), t)
    assert d[0] == 0 and d[-1] == 0 and abs(float(d[1])) < 1e-12 and abs(float(d[3])) < 1e-12  # slope 0 at the band
    assert float(d[2]) == pytest.approx(3 / (2 * g))


def saturate(gates: DSelectKGates, choice: list[list[int]]) -> None:
    """Static gates whose selector j of gate g picks expert ``choice[g][j]`` exactly."""
    with torch.no_grad():
        for g, experts in enumerate(choice):
            for j, e in enumerate(experts):
                for bit in range(gates.bits):
                    gates.z[g, j, bit] = gates.gamma if (e >> bit) & 1 else -gates.gamma


@pytest.mark.parametrize("X", [2, 5, 8])
def test_saturated_selectors_are_one_hot_and_a_gate_mixes_at_most_k_experts(X):
    gates = DSelectKGates(3, X, 2).double()
    saturate(gates, [[0, X - 1], [1, 1], [X - 1, 0]])
    q, r = gates()
    assert ((r == 0) | (r == 1)).all() and (r.sum(-1) == 1).all()
    nonzero = (q[0] > 0).sum(-1).tolist()
    assert nonzero == [2, 1, 2]  # duplicate selectors pick the same expert: their weights add
    torch.testing.assert_close(q.sum(-1), torch.ones(1, 3, dtype=torch.float64))


@pytest.mark.parametrize("X", [1, 3, 4, 7])
def test_weights_lie_in_the_simplex(X):
    torch.manual_seed(X)
    gates = DSelectKGates(2, X, min(2, X), in_features=6)
    q, r = gates(torch.randn(9, 6))
    assert q.shape == (9, 2, X) and r.shape == (9, 2, min(2, X), X)
    assert (q >= 0).all()
    total = q.sum(-1)
    if X & (X - 1) == 0:  # a power of 2: every code is an expert
        torch.testing.assert_close(total, torch.ones_like(total))
    else:  # codes past X carry the missing mass
        assert (total <= 1 + 1e-6).all()


def test_regularizer_is_zero_at_one_hot_and_penalises_unused_codes():
    gates = DSelectKGates(1, 4, 2).double()
    saturate(gates, [[0, 3]])
    _, r = gates()
    assert float(gates.regularizer(r)[0]) == pytest.approx(0.0, abs=1e-4)
    with torch.no_grad():
        gates.z.zero_()  # every S = 1/2: uniform selectors
    _, r = gates()
    assert float(gates.regularizer(r)[0]) > 1.0
    three = DSelectKGates(1, 3, 1).double()
    with torch.no_grad():
        three.z.zero_()
    _, r = three()  # each of 4 codes gets 1/4; the 3 experts hold 3/4
    entropy = -(3 * 0.25 * torch.log(torch.tensor(0.25 + 1e-6, dtype=torch.float64)))
    torch.testing.assert_close(three.regularizer(r)[0], entropy + 1 / 0.75)


def test_the_model_adds_the_weighted_regulariser_per_task():
    model = mnn.DSelectK(6, 2, 4, 2, (5,), (3,), entropy_weight=0.5)
    model(torch.randn(7, 6))
    extra = model.extra_task_losses(None)
    torch.testing.assert_close(extra, 0.5 * model.gates.regularizer(model.last_selectors))
    assert extra.shape == (2,) and extra.requires_grad
    assert mnn.DSelectK(6, 2, 4, 2, (5,), (3,), entropy_weight=0.0).extra_task_losses(None) is None


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 5}, r"k must be in \[1, 4\]"), ({"k": 0}, r"k must be in \[1, 4\]"), ({"gamma": 0.0}, "gamma must be > 0")])
def test_bad_gate_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSelectKGates(2, 4, **{"k": 2, **kwargs})


def test_per_example_gates_need_the_input():
    with pytest.raises(ValueError, match="need the input x"):
        DSelectKGates(2, 4, 2, in_features=3)()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_gates_trained_on_the_mmoe_synthetic_data_binarise_to_at_most_k_experts_per_task(seed):
    """Static gates, entropy weight 0.1, Adam on the MMoE paper's two regression tasks: every
    selector ends exactly one-hot, so each task mixes at most k = 2 of the 8 experts (fewer when
    both selectors pick the same expert, as the paper allows) with weights that sum to 1.
    bench/dselect_binarise.py measures the same at full size, through the trainer."""
    torch.manual_seed(seed)
    frame = synthetic.mmoe_frame(4000, 0.5, seed=seed)
    x = torch.tensor(frame[[f"x{j}" for j in range(synthetic.DIM)]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(frame[["y1", "y2"]].to_numpy(), dtype=torch.float32)
    model = mnn.DSelectK(synthetic.DIM, 2, 8, 2, (16,), (8,), per_example=False, entropy_weight=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(1500):
        rows = torch.randint(0, len(x), (64,))
        logits = model(x[rows])
        loss = ((logits - y[rows]) ** 2).mean(0) + model.extra_task_losses(logits)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    q, r = model.gates()
    assert ((r == 0) | (r == 1)).all()
    assert all(1 <= n <= 2 for n in (q[0] > 0).sum(-1).tolist())
    torch.testing.assert_close(q.sum(-1), torch.ones(1, 2))
