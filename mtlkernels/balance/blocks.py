"""The task gradients of the shared parameters as blocks, embedding tables in compact form.

A table of R rows looked up at N slots per batch has a dense task gradient ``[T, R, E]`` that is
zero outside the touched rows. ``SharedBlocks`` takes the task gradients at the lookup outputs
instead (``[T, N, E]``), sums the slots of equal ids (each distinct id gets one row of the
compact block, the rest are zero rows), and so holds a block whose Gram equals the dense one and
whose combination ``sum_t w_t block_t`` is the table's update row by row: written once, as a
dense ``.grad`` (as a plain backward writes it) or, for ``sparse_gradients`` tables, a sparse one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlkernels.balance.jacobian import task_gradients
from mtlkernels.nn.features import FeatureEmbedding
from mtlkernels.nn.lookup import MAX_LOOKUPS, Lookup
from mtlkernels.ops import combine_


@dataclass
class _Table:
    param: Tensor
    sparse: bool
    lookups: list[Lookup]
    rows: Tensor | None = None   # [N] the table row of each compact row (padding rows: 0)


def _tables(shared, params: list[Tensor]) -> list[_Table]:
    """The ``FeatureEmbedding`` tables among ``params`` whose lookups since the last step are all
    recorded (so their gradient can be taken at the lookup outputs); the others stay dense."""
    if not isinstance(shared, nn.Module):
        return []
    ids = {id(p) for p in params}
    tables = []
    for m in shared.modules():
        if isinstance(m, FeatureEmbedding) and m.table is not None:
            lookups = m.lookups.take()
            if id(m.table) not in ids:
                continue
            if lookups:
                tables.append(_Table(m.table, m.sparse_gradients, lookups))
            else:  # none recorded, or some dropped: only the dense gradient is exact
                _dense_only([_Table(m.table, m.sparse_gradients, [])])
    return tables


def _dense_only(tables: list[_Table]) -> None:
    """Refuses the dense fallback for a sparse-gradient table (a batched backward cannot form it)."""
    for t in tables:
        if t.sparse:
            raise ValueError(f"a FeatureEmbedding with sparse_gradients=True was looked up where no lookup was "
                             f"recorded (a compiled forward, or more than {MAX_LOOKUPS} forwards between two method "
                             "steps); its sparse gradient cannot be taken densely")


def discard_lookups(shared) -> None:
    """Forgets the recorded lookups of ``shared``'s tables (a method that does not use them)."""
    if isinstance(shared, nn.Module):
        for m in shared.modules():
            if isinstance(m, FeatureEmbedding):
                m.lookups.take()


def _compact(lookups: list[Lookup], grads: list[Tensor | None], T: int, E: int) -> tuple[Tensor, Tensor] | None:
    """``(rows [N], block [T, N, E])`` of one table from the task gradients at its lookup
    outputs; None when no lookup is in this graph."""
    ids, srcs = [], []
    for lookup, g in zip(lookups, grads):
        if g is None:
            continue
        g = g.reshape(T, -1, E)
        if lookup.slots is not None:
            g = g.index_select(1, lookup.slots)
        if lookup.weights is not None:
            g = g * lookup.weights.to(g.dtype)[None, :, None]
        ids.append(lookup.ids)
        srcs.append(g)
    if not srcs:
        return None
    ids = torch.cat(ids) if len(ids) > 1 else ids[0]
    src = torch.cat(srcs, 1) if len(srcs) > 1 else srcs[0]
    sorted_ids, order = torch.sort(ids)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    segment = torch.cumsum(first, 0) - 1  # compact row of each sorted id, no host sync
    block = src.new_zeros(T, ids.numel(), E).index_add_(1, segment, src.index_select(1, order))
    rows = sorted_ids.new_zeros(ids.numel()).scatter_(0, segment, sorted_ids)
    return rows, block


class SharedBlocks:
    """``blocks``: one ``[T, ...]`` task-gradient block per shared parameter, in their order:
    ``[T, *shape]``, or a compact ``[T, N, E]`` one for an embedding table whose lookups are
    recorded; ``leaves``: the parameters (to exclude from the backward of the rest);
    ``apply(weights)`` writes the combined update into their gradients.

    ``shared``: a model (its ``shared_parameters()`` if it has one, tables found through its
    ``FeatureEmbedding`` modules) or a list of parameters (every block dense).
    """

    def __init__(self, losses: Tensor, shared, params: list[Tensor]):
        T = losses.shape[0]
        self.leaves = params
        self.tables: dict[int, _Table] = {}  # position in params -> its table
        tables = {id(t.param): t for t in _tables(shared, params)}
        plain = [p for p in params if id(p) not in tables]
        outputs = [lookup.output for t in tables.values() for lookup in t.lookups]
        grads = task_gradients(losses, plain + outputs, unused_as_none=True)
        blocks = {id(p): g if g is not None else p.new_zeros(T, *p.shape) for p, g in zip(plain, grads)}
        k, stale = len(plain), []
        for t in tables.values():
            compact = _compact(t.lookups, grads[k:k + len(t.lookups)], T, t.param.shape[1])
            k += len(t.lookups)
            if compact is None:  # recorded lookups, none in this graph (a compiled forward records none)
                stale.append(t)
                continue
            t.rows, blocks[id(t.param)] = compact
            self.tables[next(i for i, p in enumerate(params) if p is t.param)] = t
        if stale:
            _dense_only(stale)
            for t, g in zip(stale, task_gradients(losses, [t.param for t in stale])):
                blocks[id(t.param)] = g
        self.blocks = [blocks[id(p)] for p in params]

    def check_lookups(self, parents: dict[int, set]) -> None:
        """Raises if a compact table's gradient is also fed by a graph node other than its
        recorded lookups (``parents``: ``{id(leaf): nodes}`` of this step's graph)."""
        for t in self.tables.values():
            recorded = {lookup.output.grad_fn for lookup in t.lookups}
            if not parents.get(id(t.param), set()) <= recorded:
                raise ValueError("a FeatureEmbedding's table is also used outside its forward (tied weights?): its "
                                 "gradient cannot be taken at the lookups; pass shared= a list of parameters instead")

    def apply(self, weights: Tensor) -> None:
        """``.grad += sum_t w_t block_t`` for every block; ``weights`` ``[T]``, or ``[K, T]`` with
        one row per block (per-layer weights)."""
        per_block = weights.dim() == 2
        plain = [k for k in range(len(self.leaves)) if k not in self.tables]
        if per_block:
            for k in plain:
                accumulate([self.leaves[k]], [self.blocks[k]], weights[k])
        elif plain:
            accumulate([self.leaves[k] for k in plain], [self.blocks[k] for k in plain], weights)
        for k, t in self.tables.items():
            block = self.blocks[k]
            update = torch.empty(block.shape[1:], dtype=block.dtype, device=block.device)
            combine_([block], weights[k] if per_block else weights, [update], accumulate=False)
            _add_rows(t.param, t.rows, update, t.sparse)


def _add_rows(table: Tensor, rows: Tensor, update: Tensor, sparse: bool) -> None:
    """``table.grad[rows] += update`` (rows may repeat: padding rows add zeros at row 0)."""
    if sparse:
        grad = torch.sparse_coo_tensor(rows[None], update, table.shape, check_invariants=False)
        table.grad = grad if table.grad is None else table.grad + grad
        return
    if table.grad is None:
        table.grad = torch.zeros_like(table, memory_format=torch.contiguous_format)
    table.grad.index_add_(0, rows, update)


def accumulate(params: list[Tensor], blocks: list[Tensor], weights: Tensor) -> None:
    """``p.grad += sum_t weights[t] * block[t]`` for each parameter, in place; a parameter
    without a gradient gets a fresh ``.grad`` written once (no zero fill, no read)."""
    fresh = [p.grad is None for p in params]
    for p, new in zip(params, fresh):
        if new:
            p.grad = torch.empty_like(p, memory_format=torch.contiguous_format)
    existing = [k for k, new in enumerate(fresh) if not new]
    created = [k for k, new in enumerate(fresh) if new]
    for ks, acc in ((existing, True), (created, False)):
        if ks:
            combine_([blocks[k] for k in ks], weights, [params[k].grad for k in ks], accumulate=acc)
