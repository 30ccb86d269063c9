"""Autocast for the custom ops: like ``nn.Linear``, their floating-point inputs run in the
autocast dtype when ``torch.autocast`` is on for their device (accumulation stays fp32)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def autocast_inputs(tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """``tensors`` cast to the autocast dtype of the first one's device when autocast is on there
    and every given tensor is floating point; otherwise unchanged (the op's checks then report
    a bad dtype). ``None`` entries stay ``None``."""
    given = [t for t in tensors if t is not None]
    if not given or not all(isinstance(t, Tensor) and t.is_floating_point() for t in given):
        return list(tensors)
    device_type = given[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return list(tensors)
    dtype = torch.get_autocast_dtype(device_type)
    return [None if t is None else t.to(dtype) for t in tensors]
