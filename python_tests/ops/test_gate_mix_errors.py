"""gate_mix: bad input gets a clear error naming the argument, before any kernel runs."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _extension
from mtlkernels.ops import gate_mix

needs_native = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))
BACKENDS = [pytest.param("native", marks=needs_native), "triton", "reference"]


def ok_inputs(B=4, X=3, T=2, D=5):
    return torch.randn(B, X, D), torch.randn(B, T, X)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("experts,logits,exc,match", [
    (torch.randn(4, 3), torch.randn(4, 2, 3), ValueError, r"experts must be \[B, X, D\]"),
    (torch.randn(4, 3, 5), torch.randn(4, 3), ValueError, r"logits must be \[B, T, X\]"),
    (torch.randn(4, 3, 5), torch.randn(5, 2, 3), ValueError, r"logits batch 5 != experts batch 4"),
    (torch.randn(4, 3, 5), torch.randn(4, 2, 4), ValueError, r"logits has 4 experts .* experts has 3"),
    (torch.randint(0, 3, (4, 3, 5)), torch.randn(4, 2, 3), TypeError, r"experts must be a floating dtype"),
    (torch.randn(4, 3, 5), torch.randint(0, 3, (4, 2, 3)), TypeError, r"logits dtype torch.int64 must match"),
    (torch.randn(4, 3, 5), torch.randn(4, 2, 3, dtype=torch.float64), TypeError, r"logits dtype"),
    (torch.randn(4, 3, 5), torch.randn(4, 2, 3, device="meta"), ValueError, r"logits is on meta but experts is on cpu"),
    (torch.randn(4, 0, 5), torch.randn(4, 2, 0), ValueError, r"X = 0 experts"),
    ([[1.0]], torch.randn(4, 2, 3), TypeError, r"experts must be a Tensor"),
])
def test_bad_shapes_dtypes_devices(backend, experts, logits, exc, match):
    with pytest.raises(exc, match=match):
        gate_mix(experts, logits, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_logits_name_the_row(backend, value):
    experts, logits = ok_inputs()
    logits[2, 1, 0] = value
    with pytest.raises(ValueError, match=r"logits\[2, 1\] holds NaN or \+inf"):
        gate_mix(experts, logits, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_on_a_masked_expert_is_ignored(backend):
    experts, logits = ok_inputs()
    logits[:, 0, 2] = float("nan")
    mask = torch.tensor([[True, True, False], [True, True, True]])
    logits[:, 1, 2] = 0.0
    out = gate_mix(experts, logits, expert_mask=mask, backend=backend)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_row_is_an_error(backend):
    experts, logits = ok_inputs()
    mask = torch.tensor([[True, True, True], [False, False, False]])
    with pytest.raises(ValueError, match=r"expert_mask row\(s\) \[1\] mask out every expert"):
        gate_mix(experts, logits, expert_mask=mask, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_minus_inf_row_is_an_error(backend):
    experts, logits = ok_inputs()
    logits[3, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"logits\[3, 0\] has no expert to mix"):
        gate_mix(experts, logits, backend=backend)


@needs_native
def test_native_kernel_checks_values_itself():
    """The C++ kernel validates logits in its own softmax loop, for C++ and compiled callers."""
    experts, logits = ok_inputs()
    logits[1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"logits\[1, 1\] holds NaN"):
        torch.ops.mtlk.gate_mix(experts, logits, None, False)
    with pytest.raises(ValueError, match=r"logits\[1, 1\] holds NaN"):
        torch.ops.mtlk.gate_mix_backward(torch.randn(4, 2, 5), None, experts, logits, None)
    with pytest.raises(ValueError, match=r"expert_mask must be \[T, X\]"):
        torch.ops.mtlk.gate_mix(experts, logits.nan_to_num(), torch.ones(3, 3, dtype=torch.bool), False)


@pytest.mark.parametrize("mask,exc,match", [
    (torch.ones(2, 3), TypeError, r"expert_mask must be a bool Tensor"),
    (torch.ones(3, 3, dtype=torch.bool), ValueError, r"expert_mask must be \[T, X\] = \[2, 3\]"),
    (torch.ones(2, 3, dtype=torch.bool, device="meta"), ValueError, r"expert_mask is on meta"),
])
def test_bad_mask(mask, exc, match):
    experts, logits = ok_inputs()
    with pytest.raises(exc, match=match):
        gate_mix(experts, logits, expert_mask=mask)


def test_unknown_backend_names_the_source(monkeypatch):
    experts, logits = ok_inputs()
    with pytest.raises(ValueError, match=r"backend='cuda-graph'; expected one of auto, reference, native, triton"):
        gate_mix(experts, logits, backend="cuda-graph")
    monkeypatch.setenv("MTLK_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"MTLK_BACKEND='fast'"):
        gate_mix(experts, logits)
