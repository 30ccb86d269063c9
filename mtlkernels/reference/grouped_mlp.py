"""Plain-PyTorch grouped MLP: each layer one ``einsum`` over all groups, differentiated by
autograd. The oracle of ``mtlk::grouped_mlp`` (layouts in ``mtlkernels.ops.grouped_mlp``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def grouped_mlp(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], relu: Sequence[bool],
                shared_input: bool, gates: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """Every layer's activation (post-ReLU where ``relu[l]``, times ``2 sigmoid(gates[l])`` where
    a gate ``[B, G, out_l]`` is given), in the op's layouts: ``[G, B, out_l]`` for all but the
    last, the output ``[B, G, out]`` last. Leading dimensions shared by every argument
    (``[n, B, in]``, ``[n, in, G, out]``, ...) are carried through (the op's vmap rule)."""
    h = x
    acts = []
    gates = [None] * len(weights) if gates is None else gates
    for l, (w, b, u) in enumerate(zip(weights, biases, gates)):
        h = (torch.einsum("...bi,...igo->...bgo", h, w) if l == 0 and shared_input
             else torch.einsum("...bgi,...gio->...bgo", h, w))
        if b is not None:
            h = h + b.unsqueeze(-3)
        if relu[l]:
            h = torch.relu(h)
        if u is not None:
            h = h * (2 * torch.sigmoid(u))
        acts.append(h)
    return [a.transpose(-3, -2) for a in acts[:-1]] + acts[-1:]
