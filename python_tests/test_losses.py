"""MultiTaskLoss against the formulas written out task by task; the entire-space models'
``task_logits`` (and AITM's ``extra_task_losses``) through it equal their own losses."""
from __future__ import annotations

import math

import pytest
import torch

from mtlkernels import nn as mnn
from mtlkernels.losses import MultiTaskLoss

B = 12


def direct(kinds, logits, labels, mask=None, weights=None, task_weights=None):
    """Task by task, sample by sample: ``c_t sum_i m_it w_it l_it / sum_i m_it w_it`` (0 when
    the denominator is 0), with BCE written from the sigmoid and MSE as the squared error."""
    out = []
    for t, kind in enumerate(kinds):
        num = den = 0.0
        for i in range(logits.shape[0]):
            if mask is not None and not bool(mask[i, t]):
                continue
            x, y = logits[i, t], labels[i, t]
            if kind == "binary":
                p = torch.sigmoid(x)
                loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
            else:
                loss = (x - y) ** 2
            w = 1.0 if weights is None else (weights[i] if weights.dim() == 1 else weights[i, t])
            num = num + w * loss
            den = den + w
        value = num / den if float(den) > 0 else logits.new_zeros(())
        out.append(value * (1.0 if task_weights is None else task_weights[t]))
    return torch.stack([torch.as_tensor(v, dtype=logits.dtype) for v in out])


def batch(kinds, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, len(kinds), generator=g, dtype=torch.float64) * 2
    labels = torch.stack([(torch.rand(B, generator=g) < 0.4).double() if k == "binary"
                          else torch.randn(B, generator=g, dtype=torch.float64) for k in kinds], 1)
    return logits, labels


KINDS = {"binary": ["binary", "binary"], "regression": ["regression", "regression", "regression"],
         "mixed": ["binary", "regression", "binary"]}


@pytest.mark.parametrize("kinds", list(KINDS))
@pytest.mark.parametrize("weighting", ["none", "per sample", "per task"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_the_direct_formula(kinds, weighting, masked):
    kinds = KINDS[kinds]
    logits, labels = batch(kinds)
    T = len(kinds)
    g = torch.Generator().manual_seed(1)
    weights = {"none": None, "per sample": torch.rand(B, generator=g, dtype=torch.float64) * 2,
               "per task": torch.rand(B, T, generator=g, dtype=torch.float64) * 2}[weighting]
    mask = torch.rand(B, T, generator=g) < 0.6 if masked else None
    logits.requires_grad_(True)
    got = MultiTaskLoss(kinds)(logits, labels, mask, weights)
    want = direct(kinds, logits, labels, mask, weights)
    assert got.shape == (T,)
    torch.testing.assert_close(got, want)
    v = torch.randn(T, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(got @ v, logits)[0], torch.autograd.grad(want @ v, logits)[0])


def test_unweighted_unmasked_is_the_plain_mean():
    logits, labels = batch(["binary", "regression"])
    got = MultiTaskLoss(["binary", "regression"])(logits, labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0])
    torch.testing.assert_close(got, torch.stack([bce, ((logits[:, 1] - labels[:, 1]) ** 2).mean()]))


def test_fixed_task_weights_scale_each_task():
    kinds = KINDS["mixed"]
    logits, labels = batch(kinds)
    mask = torch.ones(B, 3, dtype=torch.bool)
    mask[::2, 1] = False
    got = MultiTaskLoss(kinds, task_weights=[0.3, 0.0, 2.5])(logits, labels, mask)
    torch.testing.assert_close(got, direct(kinds, logits, labels, mask, task_weights=[0.3, 0.0, 2.5]))
    assert MultiTaskLoss(kinds, task_weights=[1, 1, 1]).task_weights is None


@pytest.mark.parametrize("kinds", list(KINDS))
def test_a_task_without_an_observed_sample_gives_zero_and_no_gradient(kinds):
    kinds = KINDS[kinds]
    logits, labels = batch(kinds)
    mask = torch.rand(B, len(kinds), generator=torch.Generator().manual_seed(2)) < 0.7
    mask[:, 1] = False
    labels[~mask] = math.nan  # unobserved labels are never read
    logits.requires_grad_(True)
    losses = MultiTaskLoss(kinds)(logits, labels, mask, torch.rand(B, dtype=torch.float64))
    assert losses[1] == 0 and torch.isfinite(losses).all()
    (grad,) = torch.autograd.grad(losses.sum(), logits)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[:, 1], torch.zeros(B, dtype=torch.float64))
    assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))


@pytest.mark.parametrize("per_task", [False, True])
def test_an_unobserved_sample_weight_is_never_read(per_task):
    """A NaN weight where the mask says unobserved (a per-task weight column left empty) changes
    neither the losses nor their gradients."""
    torch.manual_seed(0)
    logits = torch.randn(6, 2, requires_grad=True)
    labels = (torch.rand(6, 2) < 0.5).float()
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[1, 0] = mask[4, 1] = False
    weights = torch.rand(6, 2) + 0.5 if per_task else torch.rand(6) + 0.5
    clean = MultiTaskLoss(["binary", "binary"])(logits, labels, mask, weights)
    dirty_weights = weights.clone()
    if per_task:
        dirty_weights[1, 0] = dirty_weights[4, 1] = math.nan
    else:
        mask[2] = False
        clean = MultiTaskLoss(["binary", "binary"])(logits, labels, mask, weights)
        dirty_weights[2] = math.nan
    dirty = MultiTaskLoss(["binary", "binary"])(logits, labels, mask, dirty_weights)
    torch.testing.assert_close(dirty, clean)
    (g,) = torch.autograd.grad(dirty.sum(), logits)
    assert torch.isfinite(g).all()
    assert torch.isfinite(MultiTaskLoss(["binary", "binary"]).total_weight(labels, mask, dirty_weights)).all()


def test_zero_weights_of_a_task_give_zero():
    logits, labels = batch(["binary", "binary"])
    weights = torch.rand(B, 2, dtype=torch.float64)
    weights[:, 0] = 0
    losses = MultiTaskLoss(["binary", "binary"])(logits, labels, weights=weights)
    assert losses[0] == 0 and losses[1] > 0


def test_bool_labels_and_float32():
    logits = torch.randn(B, 2)
    labels = torch.rand(B, 2) < 0.5
    got = MultiTaskLoss(["binary", "binary"])(logits, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, direct(["binary", "binary"], logits.double(), labels.double()).float())


@pytest.mark.parametrize("kinds,task_weights,pattern", [
    ([], None, "kinds must be a non-empty list"),
    (["binary", "poisson"], None, "kinds must be a non-empty list"),
    (["binary", "binary"], [1.0], "task_weights must be 2 numbers >= 0"),
    (["binary", "binary"], [1.0, -0.5], "task_weights must be 2 numbers >= 0"),
    (["binary", "binary"], [1.0, math.nan], "task_weights must be 2 numbers >= 0"),
])
def test_bad_settings(kinds, task_weights, pattern):
    with pytest.raises(ValueError, match=pattern):
        MultiTaskLoss(kinds, task_weights)


@pytest.mark.parametrize("logits,labels,mask,weights,pattern", [
    (torch.zeros(B), torch.zeros(B), None, None, r"logits must be \[B, 2\], got \(12,\)"),
    (torch.zeros(B, 3), torch.zeros(B, 3), None, None, r"logits must be \[B, 2\], got \(12, 3\)"),
    (torch.zeros(B, 2), torch.zeros(B), None, None, r"labels must be \(12, 2\) like logits"),
    (torch.zeros(B, 2), torch.zeros(B, 2), torch.ones(B, 2), None, "mask must be a bool"),
    (torch.zeros(B, 2), torch.zeros(B, 2), torch.ones(B, 1, dtype=torch.bool), None, "mask must be a bool"),
    (torch.zeros(B, 2), torch.zeros(B, 2), None, torch.ones(B, 3), r"weights must be \[B\] or \[B, T\]"),
    (torch.zeros(B, 2), torch.zeros(B, 2), None, torch.ones(B - 1), r"weights must be \[B\] or \[B, T\]"),
], ids=["1-D logits", "wrong T", "labels", "float mask", "mask shape", "weights [B, 3]", "weights [B - 1]"])
def test_bad_shapes(logits, labels, mask, weights, pattern):
    with pytest.raises(ValueError, match=pattern):
        MultiTaskLoss(["binary", "binary"])(logits, labels, mask, weights)


# ---------------------------------------------------------------------------------------------
# models' task_logits through the loss
# ---------------------------------------------------------------------------------------------

def funnel_labels(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    click = (torch.rand(n, generator=g) < 0.5).double()
    return click, click * (torch.rand(n, generator=g) < 0.4).double()


def test_esmm_through_task_logits_equals_its_loss():
    torch.manual_seed(3)
    model = mnn.ESMM(6, (8,)).double()
    x = torch.randn(32, 6, dtype=torch.float64)
    click, conv = funnel_labels(32)
    out = model(x)
    ours = MultiTaskLoss(["binary", "binary"])(model.task_logits(out), torch.stack([click, conv], 1))
    theirs = mnn.ESMM.loss(out, click, conv)
    torch.testing.assert_close(ours, theirs)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(ours.sum(), params, retain_graph=True), torch.autograd.grad(theirs.sum(), params)):
        torch.testing.assert_close(a, b)


def test_esm2_through_task_logits_equals_its_loss():
    torch.manual_seed(4)
    logits = torch.randn(40, 4, dtype=torch.float64)
    click, daction = funnel_labels(40, seed=1)
    purchase = click * (torch.rand(40) < 0.3).double()
    ours = MultiTaskLoss(["binary"] * 3)(mnn.ESM2.task_logits(logits), torch.stack([click, daction, purchase], 1))
    torch.testing.assert_close(ours, mnn.ESM2.loss(logits, click, daction, purchase))


def test_aitm_through_task_logits_and_extra_losses_equals_its_loss():
    torch.manual_seed(5)
    model = mnn.AITM(6, 3, (8, 4), calibrator_alpha=0.6).double()
    x = torch.randn(24, 6, dtype=torch.float64)
    click, buy = funnel_labels(24, seed=2)
    labels = torch.stack([click, buy, buy * (torch.rand(24) < 0.5).double()], 1)
    out = model(x)
    ours = MultiTaskLoss(["binary"] * 3)(model.task_logits(out), labels) + model.extra_task_losses(out)
    torch.testing.assert_close(ours, mnn.AITM.loss(out, labels, 0.6))
    assert mnn.ESMM(6).extra_task_losses(out) is None
