"""Test helper: models with their PPNet gates away from the initial 1."""
from __future__ import annotations

from mtlkernels import nn as mnn


def randomised(model):
    """``model`` with every Gate NU's zero-initialised last layer drawn like a Linear's (gates then
    differ from 1, so a test of the gated path can fail)."""
    for module in model.modules():
        if isinstance(module, mnn.GateNUs):
            for net in module.nets:
                net.layers[-1].reset_parameters()
    return model
