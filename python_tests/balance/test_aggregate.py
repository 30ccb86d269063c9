"""aggregate(method, J): the same update and weights as method.backward on a model whose task
gradients are J, for a matrix and for per-parameter blocks; the state advances the same way."""
from __future__ import annotations

import copy

import pytest
import torch

from mtlkernels.balance import EW, MGDA, PELTR, GradVac, PCGrad, aggregate

F64 = torch.float64


def linear_problem(blocks):
    """Parameters and losses whose per-task gradients are exactly ``blocks`` (L_t = sum <J_t, p>)."""
    params = [torch.zeros(b.shape[1:], dtype=b.dtype, requires_grad=True) for b in blocks]
    T = blocks[0].shape[0]
    losses = torch.stack([sum((b[t] * p).sum() for b, p in zip(blocks, params)) for t in range(T)])
    return params, losses + torch.arange(1, T + 1, dtype=blocks[0].dtype)  # positive loss values


METHODS = {
    "pcgrad": lambda: PCGrad(seed=3),
    "gradvac": lambda: GradVac(beta=0.3, seed=3),
    "gradvac-layer": lambda: GradVac(beta=0.3, granularity="layer", seed=3),
    "mgda": lambda: MGDA(),
    "mgda-loss+": lambda: MGDA("loss+"),
    "peltr": lambda: PELTR([0.1, 0.1, 0.1, 0.1]),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_aggregate_equals_what_backward_writes(name):
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(4, 3, 5, generator=g, dtype=F64), torch.randn(4, 7, generator=g, dtype=F64)]
    trained = METHODS[name]()
    functional = copy.deepcopy(trained)
    for step in range(3):  # stateful methods: the state advances alike
        blocks = [b + 0.1 * step for b in blocks]
        params, losses = linear_problem(blocks)
        w_backward = trained.backward(losses, params)
        update, w = aggregate(functional, blocks, losses.detach())
        for p, u in zip(params, update):
            torch.testing.assert_close(u, p.grad, rtol=1e-12, atol=1e-12)
        if w.dim() == 1:
            torch.testing.assert_close(w, w_backward, rtol=1e-12, atol=1e-12)


def test_a_matrix_gives_one_vector_and_matches_its_blocks():
    J = torch.randn(3, 11, dtype=F64)
    d, w = aggregate(PCGrad(seed=1), J)
    parts, w2 = aggregate(PCGrad(seed=1), [J[:, :4], J[:, 4:]])
    assert d.shape == (11,)
    torch.testing.assert_close(torch.cat(parts), d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, w2)
    torch.testing.assert_close(d, J.t() @ w, rtol=1e-12, atol=1e-12)


def test_one_task_is_its_gradient():
    J = torch.randn(1, 6)
    d, w = aggregate(MGDA(), J)
    torch.testing.assert_close(d, J[0])
    assert w.tolist() == [1.0]


def test_mgda_on_two_opposite_gradients_is_the_min_norm_point():
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    d, w = aggregate(MGDA(), J)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5], dtype=F64))
    torch.testing.assert_close(d, torch.zeros(2, dtype=F64))


def test_errors():
    J = torch.randn(2, 5)
    with pytest.raises(TypeError, match="EW is not a gradient method"):
        aggregate(EW(), J)
    with pytest.raises(ValueError, match="weighs by the losses; pass losses"):
        aggregate(MGDA("loss"), J)
    with pytest.raises(ValueError, match=r"losses must be \[2\]"):
        aggregate(MGDA("loss"), J, torch.ones(3))
    with pytest.raises(ValueError, match=r"jacobian must be \[T, P\]"):
        aggregate(PCGrad(), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="non-empty list"):
        aggregate(PCGrad(), [])
    bad = J.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^gradients of task\(s\) \[1\] held NaN or Inf"):
        aggregate(PCGrad(), bad)
