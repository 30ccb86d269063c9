"""The seeded random projection orders of PCGrad and GradVac, saved with the method's state."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskOrder(nn.Module):
    """Draws, for each task i, a random permutation of 0..T-1 (the order in which i is
    projected against the others) from its own generator, seeded with ``seed`` or, when it is
    None, from torch's global generator (so ``torch.manual_seed`` decides the orders and two
    methods built in a row draw different ones). The generator state is part of
    ``state_dict()``, so a resumed run draws the same orders."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, T: int) -> Tensor:
        """``[T, T]`` int64 on CPU; row i is task i's order (uniform random permutations, drawn
        in one call as the argsort of T x T uniforms)."""
        return torch.rand(T, T, generator=self.generator).argsort(dim=1)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])
