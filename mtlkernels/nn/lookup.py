"""What an embedding table's forward looked up, kept so that gradient methods can take the task
gradients at the lookup output instead of materialising a dense ``[T, rows, dim]`` block per table
(``mtlkernels.balance.blocks``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: lookups kept between two consumptions; more means the forwards are not being consumed by a
#: gradient method (plain ``loss.backward()``), so the records are dropped and the next method
#: step takes the table's gradient densely
MAX_LOOKUPS = 8


@dataclass(frozen=True)
class Lookup:
    """One lookup of ``table``: ``output`` viewed as ``[S, E]`` (S looked-up slots) holds, in slot
    ``slots[i]``, the sum over i of ``weights[i] * table[ids[i]]``.

    ``ids``: ``[N]`` int64 table rows. ``slots``: ``[N]`` int64 slot of each id, or None when
    id i fills slot i (a plain gather, N = S). ``weights``: ``[N]`` per-id weights (mean-pooled
    bags' ``1 / len``), or None for ones.
    """

    output: Tensor
    ids: Tensor
    slots: Tensor | None = None
    weights: Tensor | None = None


class LookupRecords:
    """The lookups of one table since a gradient method last took them (``take``).

    Recorded only where autograd will reach the table: grad mode on, the table requiring grad,
    and not while ``torch.compile`` traces (a compiled forward records nothing, so a method
    step sees no lookup of its graph and takes the table's gradient densely). Copies and pickles
    of a module start with no record.
    """

    def __init__(self):
        self._lookups: list[Lookup] = []
        self._dropped = False

    @staticmethod
    def wanted(table: Tensor) -> bool:
        """Whether a lookup of ``table`` now is to be recorded."""
        return torch.is_grad_enabled() and table.requires_grad and not torch.compiler.is_compiling()

    def add(self, lookup: Lookup) -> None:
        if len(self._lookups) == MAX_LOOKUPS:
            self._lookups, self._dropped = [], True
            return
        self._lookups.append(lookup)

    def take(self) -> list[Lookup] | None:
        """The lookups recorded since the last call, then forgets them; None if some were
        dropped (then only the table's dense gradient is exact)."""
        lookups, dropped = self._lookups, self._dropped
        self._lookups, self._dropped = [], False
        return None if dropped else lookups

    def __deepcopy__(self, memo) -> "LookupRecords":
        return LookupRecords()

    def __getstate__(self) -> dict:
        return {"_lookups": [], "_dropped": False}
