"""In-memory multi-task tables and their batches: every column a tensor, batches gathered by
index, never a per-row ``Dataset``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
from torch import Tensor


class Bags(NamedTuple):
    """The multi-value fields of a batch: ``values`` ``[nnz]`` ids, row-major over (row, field);
    ``lengths`` ``[B, K]`` (row b's bag of field k holds ``lengths[b, k]`` ids)."""

    values: Tensor
    lengths: Tensor


@dataclass
class TabularData:
    """Rows of a multi-task table as tensors (a split, or a batch of it).

    Attributes:
        sparse: ``[N, F]`` int64 ids, per field in ``[0, vocab)``, 0 = out of vocabulary.
        bags: the ``K`` multi-value fields (``Bags``) or None.
        dense: ``[N, D]`` float32, standardised.
        labels: ``[N, T]`` float32 (0/1 for binary tasks).
        mask: ``[N, T]`` bool, True where a task's label is observed, or None (all observed).
        weights: ``[N]`` or ``[N, T]`` float32 sample weights, or None (all 1).
        users: ``[N]`` int64 user index (for GAUC/uAUC), or None.
    """

    sparse: Tensor
    dense: Tensor
    labels: Tensor
    bags: Bags | None = None
    mask: Tensor | None = None
    weights: Tensor | None = None
    users: Tensor | None = None

    def __post_init__(self):
        n = self.labels.shape[0]
        for name in ("sparse", "dense", "mask", "weights", "users"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != n:
                raise ValueError(f"TabularData: {name} has {t.shape[0]} rows, labels {n}")
        if self.bags is not None and self.bags.lengths.shape[0] != n:
            raise ValueError(f"TabularData: bags have {self.bags.lengths.shape[0]} rows, labels {n}")
        self._bag_starts = None  # (the lengths tensor they were computed from, row starts)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.labels.shape[1]

    def take(self, index: Tensor) -> "TabularData":
        """The rows ``index`` (int64 ``[n]``), bags included, gathered without a loop."""
        return TabularData(
            sparse=self.sparse.index_select(0, index), dense=self.dense.index_select(0, index),
            labels=self.labels.index_select(0, index), bags=self._take_bags(index),
            mask=None if self.mask is None else self.mask.index_select(0, index),
            weights=None if self.weights is None else self.weights.index_select(0, index),
            users=None if self.users is None else self.users.index_select(0, index))

    def _take_bags(self, index: Tensor) -> Bags | None:
        if self.bags is None:
            return None
        values, lengths = self.bags
        row_len = lengths.sum(1)
        if self._bag_starts is None or self._bag_starts[0] is not lengths:  # new bags assigned: recompute
            self._bag_starts = (lengths, torch.cumsum(row_len, 0) - row_len)
        starts = self._bag_starts[1]
        sel_len = row_len.index_select(0, index)
        out_start = torch.cumsum(sel_len, 0) - sel_len
        shift = torch.repeat_interleave(starts.index_select(0, index) - out_start, sel_len)
        positions = torch.arange(shift.numel(), dtype=torch.long) + shift
        return Bags(values.index_select(0, positions), lengths.index_select(0, index))

    def select_tasks(self, index: list[int]) -> "TabularData":
        """The same rows with the task columns ``index`` only."""
        cols = torch.tensor(index, dtype=torch.long)
        pick = lambda t: None if t is None else t.index_select(1, cols)  # noqa: E731
        return TabularData(sparse=self.sparse, dense=self.dense, labels=pick(self.labels), bags=self.bags,
                           mask=pick(self.mask), users=self.users,
                           weights=self.weights if self.weights is None or self.weights.dim() == 1 else pick(self.weights))

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None,
                start: int = 0) -> Iterator["TabularData"]:
        """Batches of ``batch_size`` rows (the last one may be smaller): a seeded permutation
        when ``generator`` is given, else in order. ``start`` skips that many batches of the same
        permutation (resuming inside an epoch)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(start * batch_size, n, batch_size):
            yield self.take(order[s:s + batch_size])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor by name (for ``torch.save``); ``from_tensors`` rebuilds the table."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "bags"}
        if self.bags is not None:
            out["bag_values"], out["bag_lengths"] = self.bags
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_tensors(cls, d: dict[str, Tensor]) -> "TabularData":
        d = dict(d)
        values, lengths = d.pop("bag_values", None), d.pop("bag_lengths", None)
        return cls(**d, bags=None if values is None else Bags(values, lengths))
