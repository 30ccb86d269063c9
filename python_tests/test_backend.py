"""Backend choice: argument, then MTLK_BACKEND, then auto (DESIGN.md)."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _backend, _extension
from mtlkernels.ops import gate_mix

needs_native = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))


@needs_native
def test_auto_picks_the_compiled_kernel_on_cpu():
    assert _backend.resolve("gate_mix", None, torch.device("cpu")) == "native"


def test_auto_on_cuda_without_a_cuda_kernel_falls_back_to_triton():
    if _extension.native_has_kernel("gate_mix", "cuda"):
        pytest.skip("this build has the CUDA kernel")
    assert _backend.resolve("gate_mix", None, torch.device("cuda")) == "triton"


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("MTLK_BACKEND", "reference")
    assert _backend.resolve("gate_mix", None, torch.device("cpu")) == "reference"
    # the argument wins over the environment
    assert _backend.resolve("gate_mix", "triton", torch.device("cpu")) == "triton"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1 for CPU tensors"):
        _backend.resolve("gate_mix", "triton", torch.device("cpu"))


@needs_native
def test_backends_agree_through_the_public_function():
    experts, logits = torch.randn(6, 4, 10), torch.randn(6, 3, 4)
    outs = {b: gate_mix(experts, logits, backend=b) for b in _backend.BACKENDS}
    torch.testing.assert_close(outs["native"], outs["reference"])
    torch.testing.assert_close(outs["triton"], outs["reference"])


@needs_native
def test_family_without_triton(monkeypatch):
    """A global MTLK_BACKEND=triton means auto for a family that has no Triton version; asking
    for Triton explicitly is an error."""
    monkeypatch.setenv("MTLK_BACKEND", "triton")
    assert _backend.resolve("mgda_weights", None, torch.device("cpu"), has_triton=False) == "native"
    with pytest.raises(ValueError, match="backend='triton' is not available for this op family"):
        _backend.resolve("mgda_weights", "triton", torch.device("cpu"), has_triton=False)
    assert _backend.resolve("mgda_weights", None, torch.device("cuda"), has_triton=False) in ("native", "reference")
