"""ESMM, ESM2 and AITM: composed probabilities, losses in log space, the calibrator."""
from __future__ import annotations

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F

from mtlkernels import nn as mnn
from mtlkernels.nn.losses import log1mexp


def naive_bce(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def test_log1mexp_accurate_at_both_ends():
    lp = torch.tensor([-1e-12, -1e-5, -0.5, -math.log(2.0), -2.0, -50.0], dtype=torch.float64)
    mpmath.mp.dps = 50
    expected = torch.tensor([float(mpmath.log(1 - mpmath.exp(v))) for v in lp.tolist()], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(lp), expected, rtol=1e-12, atol=0)


def test_esmm_loss_matches_the_probability_form_and_stays_finite():
    torch.manual_seed(1)
    logits = torch.randn(64, 2, dtype=torch.float64)
    click = (torch.rand(64) < 0.5).double()
    conv = (torch.rand(64) < 0.3).double() * click  # a conversion needs a click
    losses = mnn.ESMM.loss(logits, click, conv)
    p = mnn.ESMM.predictions(logits)
    torch.testing.assert_close(losses, torch.stack([naive_bce(p["ctr"], click), naive_bce(p["ctcvr"], click * conv)]))
    assert torch.all(p["ctcvr"] <= p["ctr"])
    extreme = torch.tensor([[60.0, 60.0], [-60.0, -60.0], [60.0, -60.0]], dtype=torch.float64, requires_grad=True)
    loss = mnn.ESMM.loss(extreme, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])).sum()
    (g,) = torch.autograd.grad(loss, extreme)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_esmm_has_no_direct_cvr_loss():
    """The CVR tower learns only through pCTCVR: with click = 0 everywhere its gradient is
    the CTCVR term's alone."""
    logits = torch.randn(16, 2, requires_grad=True)
    loss = mnn.ESMM.loss(logits, torch.zeros(16), torch.zeros(16))
    (g,) = torch.autograd.grad(loss[0], logits)
    assert torch.all(g[:, 1] == 0)


def test_esm2_composition_and_loss():
    torch.manual_seed(2)
    logits = torch.randn(50, 4, dtype=torch.float64)
    y1, y2, y3, y4 = torch.sigmoid(logits).unbind(1)
    p = mnn.ESM2.predictions(logits)
    torch.testing.assert_close(p["ctavr"], y1 * y2)
    torch.testing.assert_close(p["cvr"], y2 * y4 + (1 - y2) * y3)
    torch.testing.assert_close(p["ctcvr"], y1 * (y2 * y4 + (1 - y2) * y3))
    c, a, b = [(torch.rand(50) < q).double() for q in (0.5, 0.3, 0.2)]
    a, b = a * c, b * c  # DAction and purchase follow a click
    torch.testing.assert_close(mnn.ESM2.loss(logits, c, a, b),
                               torch.stack([naive_bce(y1, c), naive_bce(y1 * y2, c * a), naive_bce(p["ctcvr"], c * b)]))


def test_entire_space_losses_refuse_a_conversion_without_a_click():
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match="conversion is 1 without a click at row 1"):
        mnn.ESMM.loss(logits[:, :2], torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="purchase is 1 without a click at row 2"):
        mnn.ESM2.loss(logits, torch.tensor([1.0, 1.0, 0.0]), torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))


def test_task_logits_are_the_logits_of_the_composed_probabilities():
    logits = torch.randn(30, 4, dtype=torch.float64) * 8
    p = mnn.ESMM.predictions(logits[:, :2])
    torch.testing.assert_close(torch.sigmoid(mnn.ESMM.task_logits(logits[:, :2])),
                               torch.stack([p["ctr"], p["ctcvr"]], 1))
    p2 = mnn.ESM2.predictions(logits)
    torch.testing.assert_close(torch.sigmoid(mnn.ESM2.task_logits(logits)),
                               torch.stack([p2["ctr"], p2["ctavr"], p2["ctcvr"]], 1))


def test_esm2_without_daction_is_esmm():
    """Spec edge case: y2 -> 0 leaves pCVR = y3, so pCTCVR is ESMM's pCTR * pCVR."""
    logits = torch.randn(20, 4, dtype=torch.float64)
    logits[:, 1] = -80.0
    p = mnn.ESM2.predictions(logits)
    esmm = mnn.ESMM.predictions(logits[:, [0, 2]])
    torch.testing.assert_close(p["ctcvr"], esmm["ctcvr"])


def test_label_checks():
    with pytest.raises(ValueError, match=r"click must be \[B\] = \[4\]"):
        mnn.ESMM.loss(torch.zeros(4, 2), torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="conversion must hold only 0/1"):
        mnn.ESMM.loss(torch.zeros(4, 2), torch.zeros(4), torch.full((4,), 2.0))


def test_aitm_attention_is_q_dot_k_over_two_tokens():
    torch.manual_seed(3)
    model = mnn.AITM(10, 2, (8, 4)).double()
    x = torch.randn(7, 10, dtype=torch.float64)
    q = model.tower_outputs(x).transpose(0, 1)  # [T, B, k]
    p = torch.relu(x.new_tensor(0) + q[0] @ model.transfer[0] + model.transfer_bias[0])
    u = torch.stack([p, q[1]], 1)
    h = u @ model.attention[0]
    h1, h2, h3 = h[..., :4], h[..., 4:8], h[..., 8:]
    w = torch.softmax((h2 * h3).sum(-1) / 2.0, dim=1)
    z2 = (w.unsqueeze(-1) * h1).sum(1)
    z1 = q[0]
    expected = torch.stack([z1 @ model.heads.weight[0] + model.heads.bias[0],
                            z2 @ model.heads.weight[1] + model.heads.bias[1]], 1).squeeze(-1)
    torch.testing.assert_close(model(x), expected)


def test_aitm_single_task_is_a_plain_tower():
    model = mnn.AITM(6, 1, (5, 3))
    x = torch.randn(4, 6)
    assert model.towers is None and len(model.transfer) == 0
    torch.testing.assert_close(model(x)[:, 0],
                               (model.last_tower(x)[:, 0] @ model.heads.weight[0] + model.heads.bias[0])[:, 0])


def test_aitm_calibrator():
    labels = torch.zeros(3, 2)
    monotone = torch.tensor([[2.0, 1.0], [0.0, -1.0], [1.0, 1.0]])  # later step never more likely (tie included)
    torch.testing.assert_close(mnn.AITM.loss(monotone, labels, alpha=0.6),
                               F.binary_cross_entropy_with_logits(monotone, labels, reduction="none").mean(0))
    violating = torch.tensor([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    gap = (torch.sigmoid(torch.tensor(2.0)) - 0.5) / 3
    base = F.binary_cross_entropy_with_logits(violating, labels, reduction="none").mean(0)
    torch.testing.assert_close(mnn.AITM.loss(violating, labels, alpha=0.6), base + torch.stack([torch.tensor(0.0), 0.6 * gap]))
