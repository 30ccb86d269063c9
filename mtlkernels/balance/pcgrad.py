"""PCGrad (Yu et al., NeurIPS 2020; ALGORITHMS.md 3.3) in Gram form."""
from __future__ import annotations

from torch import Tensor

from mtlkernels.balance.base import GramMethod
from mtlkernels.balance.random_order import TaskOrder
from mtlkernels.ops.solvers import pcgrad_weights


class PCGrad(GramMethod):
    """Projecting conflicting gradients: each task gradient g_i is projected, in a random
    order of the other tasks j, onto the normal plane of g_j whenever they conflict
    (``<g_i', g_j> < 0``, projections against the original g_j), and the results are summed.

    Computed on G only: coefficient vectors ``c^(i)`` with ``g_i' = J^T c^(i)`` and
    ``w = sum_i c^(i)`` (the torchjd form; self skipped, strict ``< 0``, so a zero g_j never
    divides). ``reduction="sum"`` (paper, LibMTL; no conflict gives EW-sum) or ``"mean"`` (/T).
    Orders come from a generator kept in ``state_dict()``, seeded with ``seed`` or, when None,
    from ``torch.manual_seed``'s global generator. Task heads get the gradient of
    ``sum_t w_t L_t``.
    """

    def __init__(self, reduction: str = "sum", seed: int | None = None):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"PCGrad: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.order = TaskOrder(seed)

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        T = G.shape[0]
        w = pcgrad_weights(G, self.order.draw(T, G.device))
        return w / T if self.reduction == "mean" else w
