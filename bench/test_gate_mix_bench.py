"""pytest-benchmark suite of the gate mixture: native vs reference, forward and
forward+backward, at the MMoE and PLE shapes of the bar, 1 and 2 threads.

    .venv/bin/python -m pytest bench/test_gate_mix_bench.py --benchmark-group-by=param:shape,param:threads,param:pass_

For the side-by-side table with ratios and GB/s use bench/gate_mix_table.py. The Triton
backend is not benchmarked on CPU: the interpreter measures Python, not the kernel.
"""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _extension
from mtlkernels.ops import gate_mix

pytestmark = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))


def _ple_mask():
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :4] = mask[1, 4:8] = True
    mask[:, 8:] = True
    return mask


SHAPES = {"mmoe-B4096-X8-T4-D128": (4096, 8, 4, 128, None), "ple-2x4+4-B4096-D128": (4096, 12, 2, 128, _ple_mask())}


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_gate_mix(benchmark, shape, pass_, backend, threads):
    B, X, T, D, mask = SHAPES[shape]
    torch.manual_seed(0)
    experts = torch.randn(B, X, D, requires_grad=True)
    logits = torch.randn(B, T, X, requires_grad=True)
    grad = torch.randn(B, T, D)

    if pass_ == "forward":
        def run():
            with torch.no_grad():
                return gate_mix(experts, logits, expert_mask=mask, backend=backend)
    else:
        def run():
            out = gate_mix(experts, logits, expert_mask=mask, backend=backend)
            return torch.autograd.grad(out, (experts, logits), grad)

    benchmark.extra_info.update(backend=backend, threads=threads)
    benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=2)
