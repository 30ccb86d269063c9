"""Fixtures of the pytest-benchmark suites in bench/."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thr")
def threads(request):
    """Runs the benchmark at 1 and at 2 torch threads, restoring the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
