"""Recsys feature input: categorical ids, multi-value bags and dense values -> the shared input vector."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkernels.nn.lookup import Lookup, LookupRecords
from mtlkernels.nn.numeric import PiecewiseLinearEncoding


@dataclass(frozen=True)
class SparseField:
    """A categorical feature whose ids lie in ``[0, vocab_size)``."""

    name: str
    vocab_size: int


@dataclass(frozen=True)
class BagField:
    """A multi-value categorical feature: a bag of ids in ``[0, vocab_size)`` per row, pooled by
    ``"mean"`` or ``"sum"`` into one embedding slot (an empty bag pools to zeros)."""

    name: str
    vocab_size: int
    pooling: str = "mean"


@dataclass(frozen=True)
class FeatureSchema:
    """The input of a model: sparse fields (one id column each), bag fields, dense columns, the
    embedding width, the number of piecewise-linear bins each dense column is also encoded with
    (``dense_bins``, 0 for none; ``mtlkernels.nn.numeric``), and whether the dense block is
    projected to one E-wide slot (``dense_projection=True``) or passed through as it is."""

    sparse: tuple[SparseField, ...]
    dense: tuple[str, ...] = ()
    embedding_dim: int = 16
    bags: tuple[BagField, ...] = ()
    dense_projection: bool = True
    dense_bins: int = 0

    def __post_init__(self):
        if not self.sparse and not self.dense and not self.bags:
            raise ValueError("FeatureSchema: no feature")
        if self.embedding_dim < 1:
            raise ValueError(f"FeatureSchema: embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.dense_bins < 0:
            raise ValueError(f"FeatureSchema: dense_bins must be >= 0, got {self.dense_bins}")
        for f in (*self.sparse, *self.bags):
            if f.vocab_size < 1:
                raise ValueError(f"FeatureSchema: field {f.name!r} has vocab_size {f.vocab_size}")
        for f in self.bags:
            if f.pooling not in ("mean", "sum"):
                raise ValueError(f"FeatureSchema: bag field {f.name!r} pooling must be 'mean' or 'sum', "
                                 f"got {f.pooling!r}")

    @property
    def dense_width(self) -> int:
        """Width of the dense block before any projection: the D values, then their D * bins
        piecewise-linear encodings."""
        return len(self.dense) * (1 + self.dense_bins)

    @property
    def output_dim(self) -> int:
        """Width of the vector ``FeatureEmbedding`` produces: one E-slot per sparse and bag field,
        then the dense block (one E-slot, or ``dense_width`` columns unprojected)."""
        dense = (self.embedding_dim if self.dense_projection else self.dense_width) if self.dense else 0
        return (len(self.sparse) + len(self.bags)) * self.embedding_dim + dense


    def columns(self, names, what: str = "fields") -> list[int]:
        """The columns of the ``FeatureEmbedding`` output that hold the embeddings of the sparse or
        bag fields ``names`` (one E-slot each, in the order given). A ValueError names an unknown
        field, a dense one, or a repeated one."""
        slots = [f.name for f in (*self.sparse, *self.bags)]
        E = self.embedding_dim
        out, seen = [], set()
        for name in names:
            if name in seen:
                raise ValueError(f"{what}: field {name!r} named twice")
            seen.add(name)
            if name not in slots:
                kind = "a dense column (gates read embeddings)" if name in self.dense else "not a feature"
                raise ValueError(f"{what}: {name!r} is {kind}; sparse and bag fields: {', '.join(slots) or 'none'}")
            k = slots.index(name)
            out.extend(range(k * E, (k + 1) * E))
        return out


class FeatureEmbedding(nn.Module):
    """``(sparse_ids [B, F] int, dense [B, Fd] float, bags) -> x [B, schema.output_dim]``.

    All F sparse and K bag fields live in ONE embedding table (field f's rows start at the sum
    of the previous vocab sizes). Without bag fields the lookup is a single gather; with them,
    the single ids are bags of one and everything is one ``embedding_bag`` call (sum mode,
    per-id weights ``1 / len`` for mean-pooled bags): no loop over fields or rows. The dense
    block (the values, then their piecewise-linear encodings when ``dense_bins > 0``, whose edges
    ``fit_dense_bins`` learns from the training rows) is projected by one linear map to an E-wide
    slot (the MTReclib arrangement) or, with ``dense_projection=False``, appended as it is;
    float64 (pandas' default) or other float input is cast to the parameters' dtype. Ids out of ``[0, vocab_size)`` raise a ValueError
    naming the field (checked in eager mode).

    ``bags``: ``(values [nnz] int, lengths [B, K] int)`` (``mtlkernels.data.Bags``): row b's bag of
    field k is the next ``lengths[b, k]`` values, rows in order, fields in order within a row.

    ``sparse_gradients=True`` gives the table a sparse gradient (as ``nn.Embedding(sparse=True)``;
    for ``torch.optim.SparseAdam``, ``Adagrad`` or ``SGD``). Each training forward records its
    lookup (``lookups``) so that a gradient method forms the table's share of the task-gradient
    Gram and writes its update from the ``[T, B, fields, E]`` gradients at the lookup output,
    never a dense ``[T, rows, E]`` block (``mtlkernels.balance.blocks``); the table must not be
    used outside this module's forward for that to hold.
    """

    def __init__(self, schema: FeatureSchema, *, sparse_gradients: bool = False):
        super().__init__()
        self.schema = schema
        self.sparse_gradients = sparse_gradients
        self.lookups = LookupRecords()
        fields = [*schema.sparse, *schema.bags]
        vocab = [f.vocab_size for f in fields]
        offsets = torch.tensor([0] + vocab[:-1], dtype=torch.long).cumsum(0) if vocab else torch.zeros(0, dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("vocab", torch.tensor(vocab, dtype=torch.long), persistent=False)
        self.register_buffer("bag_mean", torch.tensor([f.pooling == "mean" for f in schema.bags]), persistent=False)
        self.table = nn.Parameter(torch.empty(sum(vocab), schema.embedding_dim)) if vocab else None
        self.dense_encoding = (PiecewiseLinearEncoding(len(schema.dense), schema.dense_bins)
                               if schema.dense and schema.dense_bins else None)
        self.dense_proj = (nn.Linear(schema.dense_width, schema.embedding_dim)
                           if schema.dense and schema.dense_projection else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.table is not None:
            nn.init.normal_(self.table, std=0.01)

    def fit_dense_bins(self, dense: Tensor) -> None:
        """Learn the piecewise-linear bin edges from the training rows' dense values
        ``[N, D]`` (a no-op when the schema has no ``dense_bins``)."""
        if self.dense_encoding is not None:
            self.dense_encoding.fit(dense, self.schema.dense)

    def _check(self, sparse: Tensor | None, dense: Tensor | None, bags) -> None:
        F_, D_, K = len(self.schema.sparse), len(self.schema.dense), len(self.schema.bags)
        if F_:
            if sparse is None or sparse.dim() != 2 or sparse.shape[1] != F_:
                raise ValueError(f"FeatureEmbedding: sparse_ids must be [B, {F_}], got "
                                 f"{None if sparse is None else tuple(sparse.shape)}")
            if sparse.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"FeatureEmbedding: sparse_ids must be int32/int64, got {sparse.dtype}")
        if D_:
            if dense is None or dense.dim() != 2 or dense.shape[1] != D_:
                raise ValueError(f"FeatureEmbedding: dense must be [B, {D_}], got "
                                 f"{None if dense is None else tuple(dense.shape)}")
            if not dense.is_floating_point():
                raise TypeError(f"FeatureEmbedding: dense must be floating point, got {dense.dtype}")
        if K:
            if bags is None or len(bags) != 2:
                raise ValueError(f"FeatureEmbedding: bags must be (values [nnz], lengths [B, {K}]) for the bag "
                                 f"fields {[f.name for f in self.schema.bags]}")
            values, lengths = bags
            if lengths.dim() != 2 or lengths.shape[1] != K or values.dim() != 1:
                raise ValueError(f"FeatureEmbedding: bags must be (values [nnz], lengths [B, {K}]), got values "
                                 f"{tuple(values.shape)}, lengths {tuple(lengths.shape)}")
            if values.dtype not in (torch.int32, torch.int64) or lengths.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"FeatureEmbedding: bag values and lengths must be int32/int64, got "
                                f"{values.dtype}, {lengths.dtype}")
        elif bags is not None:
            raise ValueError("FeatureEmbedding: bags given but the schema has no bag field")
        batches = {n: t.shape[0] for n, t in (("sparse_ids", sparse if F_ else None), ("dense", dense if D_ else None),
                                               ("bags", bags[1] if K else None)) if t is not None}
        if len(set(batches.values())) > 1:
            raise ValueError(f"FeatureEmbedding: inputs disagree on the batch size: {batches}")
        if torch.compiler.is_compiling():
            return
        if F_:
            bad = (sparse < 0) | (sparse >= self.vocab[:F_])
            if bool(bad.any()):
                row, col = bad.nonzero()[0].tolist()
                field = self.schema.sparse[col]
                raise ValueError(f"FeatureEmbedding: field {field.name!r} id {int(sparse[row, col])} at row {row} "
                                 f"is outside [0, {field.vocab_size})")
        if K:
            values, lengths = bags
            if bool((lengths < 0).any()) or int(lengths.sum()) != values.numel():
                raise ValueError(f"FeatureEmbedding: bag lengths must be >= 0 and sum to the {values.numel()} values")
            field_of = torch.repeat_interleave(torch.arange(K, device=lengths.device).repeat(lengths.shape[0]),
                                               lengths.flatten())
            bad = (values < 0) | (values >= self.vocab[F_:][field_of])
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                field = self.schema.bags[int(field_of[i])]
                raise ValueError(f"FeatureEmbedding: bag field {field.name!r} id {int(values[i])} is outside "
                                 f"[0, {field.vocab_size})")

    def _lookup_bags(self, sparse: Tensor | None, bags) -> Tensor:
        """One ``embedding_bag`` over the single ids (bags of one) and the bag fields, row-major
        over (row, slot): ``[B, (F + K) * E]``."""
        values, lengths = bags
        B, K = lengths.shape
        F_ = len(self.schema.sparse)
        lengths = lengths.long()
        ones = lengths.new_ones(B, F_)
        slot_len = torch.cat([ones, lengths], 1)  # [B, F + K]
        starts = (torch.cumsum(slot_len.flatten(), 0) - slot_len.flatten()).view(B, F_ + K)
        ids = values.new_empty(int(slot_len.sum()), dtype=torch.long)
        if F_:
            ids[starts[:, :F_].flatten()] = (sparse.long() + self.offsets[:F_]).flatten()
        nb = lengths.flatten()
        if values.numel():
            first = torch.cumsum(nb, 0) - nb  # start of each bag inside ``values``
            within = torch.arange(values.numel(), device=values.device) - torch.repeat_interleave(first, nb)
            pos = torch.repeat_interleave(starts[:, F_:].flatten(), nb) + within
            ids[pos] = values.long() + torch.repeat_interleave(self.offsets[F_:].repeat(B), nb)
        weights = None
        if bool(self.bag_mean.any()):
            inv = torch.where(self.bag_mean, 1.0 / lengths.clamp_min(1).to(self.table.dtype),
                              torch.ones((), dtype=self.table.dtype, device=lengths.device))
            w = torch.cat([torch.ones(B, F_, dtype=self.table.dtype, device=lengths.device), inv], 1)
            weights = torch.repeat_interleave(w.flatten(), slot_len.flatten())
        out = F.embedding_bag(ids, self.table, starts.flatten(), mode="sum", per_sample_weights=weights,
                              sparse=self.sparse_gradients)
        if self.lookups.wanted(self.table):
            slots = torch.repeat_interleave(torch.arange(B * (F_ + K), device=ids.device), slot_len.flatten())
            self.lookups.add(Lookup(out, ids, slots, weights))
        return out.view(B, (F_ + K) * self.schema.embedding_dim)

    def _lookup(self, sparse: Tensor) -> Tensor:
        """The single-id fields: one gather, ``[B, F * E]``."""
        ids = sparse + self.offsets
        out = F.embedding(ids, self.table, sparse=self.sparse_gradients)
        if self.lookups.wanted(self.table):
            self.lookups.add(Lookup(out, ids.flatten().long()))
        return out.flatten(1)

    def forward(self, sparse_ids: Tensor | None, dense: Tensor | None = None, bags=None) -> Tensor:
        self._check(sparse_ids, dense, bags)
        parts = []
        if self.schema.bags:
            parts.append(self._lookup_bags(sparse_ids, bags))
        elif self.table is not None:
            parts.append(self._lookup(sparse_ids))
        if self.schema.dense:
            param = self.table if self.table is not None else self.dense_proj.weight if self.dense_proj else None
            dense = dense.to(param.dtype if param is not None else torch.get_default_dtype())
            if self.dense_encoding is not None:
                dense = torch.cat([dense, self.dense_encoding(dense)], dim=1)
            parts.append(self.dense_proj(dense) if self.dense_proj is not None else dense)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class WithFeatures(nn.Module):
    """A model fed by a ``FeatureEmbedding``: ``forward(sparse_ids, dense, ...)``.

    The embeddings are shared by every task, so ``shared_parameters()`` adds them to the
    model's own shared parameters.
    """

    def __init__(self, features: FeatureEmbedding, model: nn.Module):
        super().__init__()
        self.features, self.model = features, model

    def forward(self, sparse_ids: Tensor | None, dense: Tensor | None = None, bags=None, **kwargs):
        return self.model(self.features(sparse_ids, dense, bags), **kwargs)

    def task_logits(self, out: Tensor) -> Tensor:
        return self.model.task_logits(out)

    def extra_task_losses(self, out: Tensor) -> Tensor | None:
        return self.model.extra_task_losses(out)

    def shared_parameters(self):
        yield from self.features.parameters()
        yield from self.model.shared_parameters()

    def task_specific_parameters(self):
        yield from self.model.task_specific_parameters()
