"""Plain-PyTorch grouped MLP: each layer one ``einsum`` over all groups, differentiated by
autograd. The oracle of ``mtlk::grouped_mlp`` (layouts in ``mtlkernels.ops.grouped_mlp``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def grouped_mlp(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], relu: Sequence[bool],
                shared_input: bool) -> list[Tensor]:
    """Every layer's activation (post-ReLU where ``relu[l]``), in the op's layouts: ``[G, B, out_l]``
    for all but the last, the output ``[B, G, out]`` last. Leading dimensions shared by every
    argument (``[n, B, in]``, ``[n, in, G, out]``, ...) are carried through (the op's vmap rule)."""
    h = x
    acts = []
    for l, (w, b) in enumerate(zip(weights, biases)):
        h = (torch.einsum("...bi,...igo->...bgo", h, w) if l == 0 and shared_input
             else torch.einsum("...bgi,...gio->...bgo", h, w))
        if b is not None:
            h = h + b.unsqueeze(-3)
        if relu[l]:
            h = torch.relu(h)
        acts.append(h)
    return [a.transpose(-3, -2) for a in acts[:-1]] + acts[-1:]
