"""Counter-based random draws saved with a method's state: the projection orders of PCGrad and
GradVac, RLW's weights. A draw hashes (seed, draw number, position) (``mtlkernels.ops.counter_keys``,
one kernel on CPU and CUDA): nothing read back, resumable from ``state_dict()``."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlkernels.ops.counter_keys import counter_keys


class CounterDraws(nn.Module):
    """A seed and a draw counter (buffers): the state of a counter-based random stream. The seed
    is ``seed`` or, when None, one drawn from torch's global generator (so ``torch.manual_seed``
    decides the stream and two methods built in a row draw differently)."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def keys(self, n: int, device=None) -> Tensor:
        """The next draw: ``[n]`` int64 keys (uniform over [0, 2^63))."""
        device = self.draws.device if device is None else device
        keys = counter_keys(self.seed.to(device), self.draws.to(device), n)
        self.draws.add_(1)
        return keys

    def normal(self, n: int, device=None, dtype=torch.float64) -> Tensor:
        """The next draw as ``[n]`` standard normals (Box-Muller on two 31-bit uniforms per key)."""
        k = self.keys(n, device)
        u1 = ((k >> 32) + 1).to(torch.float64) / 2.0**31  # (0, 1]
        u2 = (k & 0x7FFFFFFF).to(torch.float64) / 2.0**31  # [0, 1)
        return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).to(dtype)


class TaskOrder(CounterDraws):
    """Draws, for each task i, a random permutation of 0..T-1 (the order in which i is
    projected against the others): the argsort of T x T hashed keys (see ``CounterDraws``; it
    compiles with ``torch.compile(fullgraph=True)``)."""

    def draw(self, T: int, device: torch.device | str | None = None) -> Tensor:
        """``[T, T]`` int64 on ``device`` (default: the buffers'); row i is task i's order."""
        return self.keys(T * T, device).view(T, T).argsort(dim=1)
