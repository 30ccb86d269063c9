"""The random projection orders of PCGrad and GradVac, a counter-based draw saved with the
method's state."""
from __future__ import annotations

import torch
from torch import Tensor, nn

_MASK = (1 << 63) - 1  # non-negative int64


def _mix(x: Tensor) -> Tensor:
    """A 63-bit integer mixer (splitmix64's finaliser on the low 63 bits, in int64 arithmetic:
    products wrap, shifts are masked to be logical): uniform-looking keys from a counter."""
    x = x & _MASK
    x = ((x ^ (x >> 30)) * -4658895280553007687) & _MASK  # 0xbf58476d1ce4e5b9
    x = ((x ^ (x >> 27)) * -7723592293110705685) & _MASK  # 0x94d049bb133111eb
    return (x ^ (x >> 31)) & _MASK


class TaskOrder(nn.Module):
    """Draws, for each task i, a random permutation of 0..T-1 (the order in which i is
    projected against the others): the argsort of T x T keys hashed from (seed, draw number,
    position). The seed is ``seed`` or, when None, one drawn from torch's global generator (so
    ``torch.manual_seed`` decides the orders and two methods built in a row draw different ones).
    The draw counter is a buffer: ``state_dict()`` resumes the sequence, and a draw is plain
    tensor arithmetic (no host generator, nothing read back; it compiles with
    ``torch.compile(fullgraph=True)``)."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def draw(self, T: int, device: torch.device | str | None = None) -> Tensor:
        """``[T, T]`` int64 on ``device`` (default: the buffers'); row i is task i's order."""
        device = self.draws.device if device is None else device
        seed, draws = self.seed.to(device), self.draws.to(device)
        position = torch.arange(T * T, dtype=torch.int64, device=device)
        keys = _mix(_mix(seed) ^ _mix(draws * (T * T) + position + 0x2545F4914F6CDD1D))
        self.draws.add_(1)
        return keys.view(T, T).argsort(dim=1)
