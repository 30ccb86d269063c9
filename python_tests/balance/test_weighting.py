"""EW, Uncertainty Weighting, DWA, and the per-task gradient machinery."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from mtlkernels.balance import DWA, EW, RLW, UncertaintyWeighting, task_gradients

from .conftest import Problem


def test_ew_sum_and_mean(problem):
    losses = problem.losses()
    w = EW().backward(losses, problem.model)
    assert torch.equal(w, torch.ones(3, dtype=w.dtype))
    got = [p.grad.clone() for p in problem.model.parameters()]
    problem.zero_grad()
    problem.losses().sum().backward()
    for a, p in zip(got, problem.model.parameters()):
        torch.testing.assert_close(a, p.grad)
    problem.zero_grad()
    assert torch.allclose(EW("mean").backward(problem.losses(), problem.model), torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("form,coef", [("regression", 0.5), ("classification", 1.0)])
def test_uw_optimum_gives_weight_one_over_two_l(form, coef):
    losses = torch.tensor([0.3, 2.0, 0.05], dtype=torch.float64, requires_grad=True)
    uw = UncertaintyWeighting(3, form=form).double()
    with torch.no_grad():
        uw.log_var.copy_(torch.log(2 * coef * losses.detach()))
    w = uw.backward(losses)
    torch.testing.assert_close(uw.log_var.grad, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w, 1 / (2 * losses.detach()))
    torch.testing.assert_close(losses.grad, w)


def test_uw_clamps_log_variance():
    uw = UncertaintyWeighting(2)
    with torch.no_grad():
        uw.log_var.fill_(-50.0)
    w = uw.loss_weights(torch.ones(2))
    assert torch.allclose(w, torch.full((2,), math.exp(10.0)))


def test_dwa_warm_up_then_softmax_of_loss_ratios():
    dwa = DWA(3, temperature=2.0)
    for epoch_losses in ([2.0, 1.0, 4.0], [1.0, 1.0, 2.0]):
        w = dwa.backward(torch.tensor(epoch_losses, requires_grad=True))
        assert torch.equal(w, torch.ones(3))
        dwa.end_epoch()
    w = dwa.backward(torch.tensor([1.0, 1.0, 1.0], requires_grad=True))
    ratio = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(w.double(), 3 * torch.softmax(ratio / 2.0, 0), atol=1e-6, rtol=1e-6)
    assert abs(float(w.sum()) - 3) < 1e-5


def test_dwa_equal_ratios_give_ones_and_state_resumes():
    dwa = DWA(2)
    for v in (2.0, 1.0):
        dwa.backward(torch.tensor([v, 2 * v], requires_grad=True))
        dwa.end_epoch()
    fresh = DWA(2)
    fresh.load_state_dict(dwa.state_dict())
    a = dwa.backward(torch.tensor([1.0, 1.0], requires_grad=True))
    b = fresh.backward(torch.tensor([1.0, 1.0], requires_grad=True))
    assert torch.allclose(a, torch.ones(2)) and torch.equal(a, b)
    with pytest.raises(RuntimeError, match="no loss was seen"):
        DWA(2).end_epoch()


def test_task_gradients_batched_equals_loop(problem):
    losses = problem.losses()
    batched = task_gradients(losses, problem.shared())
    looped = task_gradients(losses, problem.shared(), batched=False)
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b)
    J = problem.jacobian()
    torch.testing.assert_close(torch.cat([b.reshape(3, -1) for b in batched], 1), J)


class DoubleWithItemInBackward(torch.autograd.Function):
    """Its backward reads a value with .item(), which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * (2.0 + 0.0 * float(g.sum().item()))


def test_task_gradients_fall_back_when_a_batching_rule_is_missing():
    w = torch.randn(4, requires_grad=True)
    h = DoubleWithItemInBackward.apply(w)
    losses = torch.stack([h.sum(), (h ** 2).sum()])
    with pytest.warns(RuntimeWarning, match="falling back to 2 backward passes"):
        (block,) = task_gradients(losses, [w])
    torch.testing.assert_close(block, torch.stack([torch.full((4,), 2.0), 8 * w.detach()]))


class FailsInBackward(torch.autograd.Function):
    """Its backward raises what a real failure would (out of memory, a shape error)."""

    error: Exception = RuntimeError("boom")

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        raise FailsInBackward.error


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("The size of tensor a (3) must match the size of tensor b (4)")])
def test_task_gradients_do_not_fall_back_on_other_errors(error, monkeypatch):
    monkeypatch.setattr(FailsInBackward, "error", error)
    w = torch.randn(4, requires_grad=True)
    h = FailsInBackward.apply(w)
    losses = torch.stack([h.sum(), (h ** 2).sum()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "falling back" warning: the error propagates at once
        with pytest.raises(type(error), match=str(error)[:20]):
            task_gradients(losses, [w])


def test_task_that_does_not_touch_an_input_gets_zeros():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    losses = torch.stack([a.sum(), b.sum() * 2])
    ga, gb = task_gradients(losses, [a, b])
    torch.testing.assert_close(ga, torch.stack([torch.ones(3), torch.zeros(3)]))
    torch.testing.assert_close(gb, torch.stack([torch.zeros(2), torch.full((2,), 2.0)]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("make", [EW, lambda: UncertaintyWeighting(3), lambda: DWA(3), RLW])
def test_non_finite_loss_is_flagged_on_the_device_and_raised_by_check_finite(make, bad):
    """backward reads nothing back; check_finite() raises naming the task, once, then clears."""
    method = make()
    p = Problem()
    method.backward(p.losses(), p.model)
    method.check_finite()  # a finite step passes

    def bad_losses():
        losses = p.losses()
        return torch.cat([losses[:1], losses[1:2] * bad, losses[2:]])

    method.backward(bad_losses(), p.model)
    with pytest.raises(ValueError, match=r"^losses of task\(s\) \['b'\] held NaN or Inf; do not apply this step"):
        method.check_finite(["a", "b", "c"])
    method.check_finite()  # cleared by the raise
    p.model.zero_grad()
    method.backward(p.losses(), p.model)  # flags accumulate until checked
    method.backward(bad_losses(), p.model)
    method.backward(p.losses(), p.model)
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        method.check_finite()


@pytest.mark.parametrize("make", [EW, lambda: UncertaintyWeighting(2), lambda: DWA(2)])
def test_weighting_methods_pass_a_non_finite_gradient_of_finite_losses_through(make):
    """The documented contract: weighting methods check the losses, not the gradients (one
    backward, no per-task gradient to inspect); a NaN gradient reaches ``.grad`` as it is."""
    w = torch.tensor([0.0, 1.0], requires_grad=True)
    losses = torch.stack([w.sqrt().sum(), (w * w).sum()])  # finite; d sqrt(x)/dx at 0 is inf
    make().backward(losses, [w])
    assert not torch.isfinite(w.grad).all()


def test_dwa_state_follows_the_losses_device():
    """No host read-back per step: the history moves to the losses' device (meta stands in for
    a GPU here) and the weights come back there."""
    dwa = DWA(2)
    w = dwa.loss_weights(torch.ones(2, device="meta"))
    assert w.device.type == "meta"
    assert {dwa.running_sum.device.type, dwa.running_count.device.type, dwa.epoch_means.device.type} == {"meta"}


def test_gradnorm_moves_weight_towards_the_slower_task_and_resumes():
    from mtlkernels.balance import GradNorm

    p = Problem(T=2, seed=3, dtype=torch.float32)
    layer = [p.model.experts.layers[-1].weight]
    gn = GradNorm(2, layer, alpha=1.5, lr=0.05)
    w0 = gn.backward(p.losses(), p.model)
    assert torch.equal(w0, torch.ones(2))
    assert abs(float(gn.weights.sum()) - 2) < 1e-9 and bool((gn.weights > 0).all())
    # second step: make task 1's loss ratio much larger (it trains slower): its weight must grow
    p.zero_grad()
    losses = p.losses()
    losses = torch.stack([losses[0] * 0.1, losses[1] * 10])
    before = gn.weights.clone()
    gn.backward(losses, p.model)
    assert gn.weights[1] > before[1] and abs(float(gn.weights.sum()) - 2) < 1e-9
    clone = GradNorm(2, layer, alpha=1.5, lr=0.05)
    clone.load_state_dict(gn.state_dict())
    p.zero_grad()
    a = gn.backward(p.losses(), p.model)
    p.zero_grad()
    b = clone.backward(p.losses(), p.model)
    assert torch.equal(a, b) and torch.equal(gn.weights, clone.weights)
