"""Models and the gate kernel under CPU bfloat16 autocast: losses close to float32."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import nn as mnn
from mtlkernels.nn.losses import bce_from_logits
from mtlkernels.ops import gate_mix
from python_tests.nn.gates_helper import randomised


@pytest.mark.parametrize("make", [lambda: mnn.MMoE(32, 3, 4, (64, 32), (16,)),
                                  lambda: mnn.PLE(32, 2, [2, 1], 2, (32,), (8,), num_levels=2),
                                  lambda: mnn.SharedBottom(32, 2, (64, 32), (8,)),
                                  lambda: mnn.AITM(32, 2, (32, 16)),
                                  lambda: randomised(mnn.PEPNet(32, 2, [0, 1, 2, 3], [4, 5], (32, 16))),
                                  lambda: randomised(mnn.MMoE(32, 2, 4, (32, 16), (8,), expert_gate_columns=[0, 1]))])
def test_bf16_autocast_losses_within_tolerance(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(256, 32)
    labels = (torch.rand(256, model.num_tasks) < 0.3).float()
    fp32 = bce_from_logits(model(x), labels)
    params = list(model.parameters())
    want = torch.autograd.grad(fp32.sum(), params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    bf16 = bce_from_logits(logits.float(), labels)
    # bf16 matmuls carry ~2^-8 relative error per product; the losses agree to about 1%
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=1e-2)
    bf16.sum().backward()
    for (name, p), g in zip(model.named_parameters(), want):
        assert p.grad is not None and p.grad.dtype == torch.float32, name  # master weights stay fp32
        assert torch.isfinite(p.grad).all(), name
        # every gradient points where the float32 one does
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), g.flatten(), dim=0)
        assert float(cos) > 0.95, (name, float(cos))


def test_gate_mix_casts_mixed_inputs_under_autocast():
    experts = torch.randn(8, 3, 16, dtype=torch.bfloat16)
    logits = torch.randn(8, 2, 3)  # float32 from a computation outside autocast
    with pytest.raises(TypeError, match="must match experts dtype"):
        gate_mix(experts, logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gate_mix(experts, logits)
    assert out.dtype == torch.bfloat16
    ref = torch.softmax(logits.bfloat16().float(), -1) @ experts.float()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
