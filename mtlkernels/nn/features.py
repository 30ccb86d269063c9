"""Recsys feature input: categorical ids and dense values -> the shared input vector."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class SparseField:
    """A categorical feature whose ids lie in ``[0, vocab_size)``."""

    name: str
    vocab_size: int


@dataclass(frozen=True)
class FeatureSchema:
    """The input of a model: sparse fields (one id column each), dense columns, embedding width."""

    sparse: tuple[SparseField, ...]
    dense: tuple[str, ...] = ()
    embedding_dim: int = 16

    def __post_init__(self):
        if not self.sparse and not self.dense:
            raise ValueError("FeatureSchema: no feature")
        if self.embedding_dim < 1:
            raise ValueError(f"FeatureSchema: embedding_dim must be >= 1, got {self.embedding_dim}")
        for f in self.sparse:
            if f.vocab_size < 1:
                raise ValueError(f"FeatureSchema: field {f.name!r} has vocab_size {f.vocab_size}")

    @property
    def output_dim(self) -> int:
        """Width of the vector ``FeatureEmbedding`` produces: one E-slot per sparse field, plus one
        for the dense block."""
        return (len(self.sparse) + (1 if self.dense else 0)) * self.embedding_dim


class FeatureEmbedding(nn.Module):
    """``(sparse_ids [B, F] int, dense [B, Fd] float) -> x [B, schema.output_dim]``.

    All F fields live in ONE embedding table (field f's rows start at the sum of the previous
    vocab sizes), so the lookup is a single gather, not one module call per field. The dense
    block is projected by one linear map to an E-wide slot (the MTReclib arrangement). Ids out
    of ``[0, vocab_size)`` raise a ValueError naming the field (checked in eager mode).
    """

    def __init__(self, schema: FeatureSchema):
        super().__init__()
        self.schema = schema
        vocab = [f.vocab_size for f in schema.sparse]
        offsets = torch.tensor([0] + vocab[:-1], dtype=torch.long).cumsum(0) if vocab else torch.zeros(0, dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("vocab", torch.tensor(vocab, dtype=torch.long), persistent=False)
        self.table = nn.Parameter(torch.empty(sum(vocab), schema.embedding_dim)) if vocab else None
        self.dense_proj = nn.Linear(len(schema.dense), schema.embedding_dim) if schema.dense else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.table is not None:
            nn.init.normal_(self.table, std=0.01)

    def _check(self, sparse: Tensor | None, dense: Tensor | None) -> None:
        F_, D_ = len(self.schema.sparse), len(self.schema.dense)
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
        if F_ and D_ and sparse.shape[0] != dense.shape[0]:
            raise ValueError(f"FeatureEmbedding: sparse_ids batch {sparse.shape[0]} != dense batch {dense.shape[0]}")
        if F_ and not torch.compiler.is_compiling():
            bad = (sparse < 0) | (sparse >= self.vocab)
            if bool(bad.any()):
                row, col = bad.nonzero()[0].tolist()
                field = self.schema.sparse[col]
                raise ValueError(f"FeatureEmbedding: field {field.name!r} id {int(sparse[row, col])} at row {row} "
                                 f"is outside [0, {field.vocab_size})")

    def forward(self, sparse_ids: Tensor | None, dense: Tensor | None = None) -> Tensor:
        self._check(sparse_ids, dense)
        parts = []
        if self.table is not None:
            parts.append(F.embedding(sparse_ids + self.offsets, self.table).flatten(1))
        if self.dense_proj is not None:
            parts.append(self.dense_proj(dense))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class WithFeatures(nn.Module):
    """A model fed by a ``FeatureEmbedding``: ``forward(sparse_ids, dense, ...)``.

    The embeddings are shared by every task, so ``shared_parameters()`` adds them to the
    model's own shared parameters.
    """

    def __init__(self, features: FeatureEmbedding, model: nn.Module):
        super().__init__()
        self.features, self.model = features, model

    def forward(self, sparse_ids: Tensor | None, dense: Tensor | None = None, **kwargs):
        return self.model(self.features(sparse_ids, dense), **kwargs)

    def shared_parameters(self):
        yield from self.features.parameters()
        yield from self.model.shared_parameters()

    def task_specific_parameters(self):
        yield from self.model.task_specific_parameters()
