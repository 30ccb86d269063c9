"""FAMO: the step's weights are the official objective's gradient, the logits move by exactly
torch.optim.Adam's step on the official update, absent tasks, state and resume, errors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mtlkernels.balance import FAMO

from .conftest import Problem

F64 = torch.float64


class OfficialFAMO:
    """The official algorithm written out with autograd and torch.optim.Adam (the oracle)."""

    def __init__(self, T, lr=0.025, weight_decay=1e-3):
        self.w = torch.zeros(T, dtype=F64, requires_grad=True)
        self.opt = torch.optim.Adam([self.w], lr=lr, weight_decay=weight_decay)
        self.prev = None

    def objective(self, losses):
        z = F.softmax(self.w, -1).detach()
        D = losses + 1e-8
        c = (z / D).sum().detach()
        self.prev = losses.detach()
        return (D.log() * z / c).sum()

    def update(self, new_losses):
        delta = (self.prev + 1e-8).log() - (new_losses.detach() + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta)[0]
        self.opt.zero_grad()
        self.w.grad = d
        self.opt.step()


def test_weights_and_logits_follow_the_official_algorithm():
    g = torch.Generator().manual_seed(0)
    ours, official = FAMO(3), OfficialFAMO(3)
    for step in range(6):
        losses = (torch.rand(3, generator=g, dtype=F64) + 0.1).requires_grad_()
        w = ours.loss_weights(losses)
        (grad,) = torch.autograd.grad(official.objective(losses), losses)
        torch.testing.assert_close(w, grad, rtol=1e-12, atol=1e-15)  # d objective / d L_i
        new = losses.detach() * (0.5 + torch.rand(3, generator=g, dtype=F64))
        ours.after_step(new)
        official.update(new)
        torch.testing.assert_close(ours.logits, official.w.detach(), rtol=1e-12, atol=1e-15)
    assert not torch.allclose(ours.logits, torch.zeros(3, dtype=F64))


def test_backward_is_one_weighted_backward_and_state_resumes():
    p = Problem(T=3, seed=5)
    method = FAMO(3)
    for _ in range(3):
        p.zero_grad()
        losses = p.losses()
        w = method.backward(losses, p.model)
        method.check_finite()
        method.after_step(p.losses().detach() * 0.9)
    expected = torch.autograd.grad((w.detach() * p.losses()).sum(), list(p.model.parameters()))
    p.zero_grad()
    clone = FAMO(3)
    clone.load_state_dict(copy.deepcopy(method.state_dict()))
    losses = p.losses()
    torch.testing.assert_close(clone.loss_weights(losses), method.loss_weights(losses), rtol=0, atol=0)
    assert all(torch.isfinite(e).all() for e in expected)


def test_an_absent_task_is_left_out():
    method = FAMO(3)
    losses = torch.tensor([0.5, 0.0, 0.2], dtype=F64, requires_grad=True)  # task 1 absent from the batch
    w = method.loss_weights(losses)
    assert w[1] == 0 and (w[[0, 2]] > 0).all() and torch.isfinite(w).all()
    method.after_step(torch.tensor([0.4, 0.3, 0.2], dtype=F64))
    z = torch.softmax(method.logits, 0)
    assert torch.isfinite(method.logits).all() and z[0] < z[2]  # task 0 improved, task 2 did not


def test_errors():
    with pytest.raises(ValueError, match="FAMO: need lr > 0"):
        FAMO(2, lr=0)
    with pytest.raises(ValueError, match="FAMO: 3 min_losses for 2 tasks"):
        FAMO(2, min_losses=[0, 0, 0])
    with pytest.raises(ValueError, match="FAMO: 3 losses for 2 tasks"):
        FAMO(2).loss_weights(torch.ones(3))
