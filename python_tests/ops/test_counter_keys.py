"""counter_keys: the native kernel gives the reference's bits for any seed, draw and length
(generated), on the device of its arguments; opcheck, compile, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels import _extension
from mtlkernels.balance.random_order import TaskOrder
from mtlkernels.ops.counter_keys import counter_keys
from mtlkernels.reference.counter_keys import counter_keys as reference

pytestmark = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**62 - 1), draw=st.integers(0, 2**40), n=st.integers(0, 300))
def test_native_equals_reference(seed, draw, n):
    s, d = torch.tensor(seed), torch.tensor(draw)
    keys = counter_keys(s, d, n, backend="native")
    assert keys.dtype == torch.int64 and keys.shape == (n,)
    assert torch.equal(keys, reference(s, d, n))
    assert bool((keys >= 0).all())


def test_draws_differ_and_look_uniform():
    s = torch.tensor(3)
    a, b = counter_keys(s, torch.tensor(0), 4096), counter_keys(s, torch.tensor(1), 4096)
    assert not torch.equal(a, b) and a.unique().numel() == 4096
    top = (a >> 61).bincount(minlength=4).double() / 4096  # the top two bits: 4 equal bins
    assert float((top - 0.25).abs().max()) < 0.04


def test_task_orders_are_permutations_and_compile():
    torch._dynamo.reset()
    order = TaskOrder(seed=11)
    eager = order.draw(5)
    assert torch.equal(eager.sort(dim=1).values, torch.arange(5).expand(5, 5))
    order.draws.zero_()
    compiled = torch.compile(lambda: order.draw(5), fullgraph=True)
    assert torch.equal(compiled(), eager)


def test_opcheck_and_errors():
    torch.library.opcheck(torch.ops.mtlk.counter_keys.default, (torch.tensor(5), torch.tensor(2), 17))
    with pytest.raises(ValueError, match="seed must be a 0-dim int64 tensor"):
        counter_keys(torch.tensor([1]), torch.tensor(0), 3)
    with pytest.raises(ValueError, match="draw must be a 0-dim int64 tensor"):
        counter_keys(torch.tensor(1), torch.tensor(0.0), 3)
    with pytest.raises(ValueError, match="n must be >= 0"):
        counter_keys(torch.tensor(1), torch.tensor(0), -1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        torch.ops.mtlk.counter_keys(torch.tensor(1), torch.tensor(0), -1)
