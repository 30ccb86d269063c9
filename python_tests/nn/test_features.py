"""FeatureEmbedding: one fused lookup equals per-field lookups; clear errors."""
from __future__ import annotations

import pytest
import torch

from mtlkernels.nn import FeatureEmbedding, FeatureSchema, MMoE, SparseField, WithFeatures

SCHEMA = FeatureSchema(sparse=(SparseField("age_bucket", 5), SparseField("region", 3), SparseField("device", 7)),
                       dense=("hours", "income"), embedding_dim=4)


def test_fused_lookup_equals_per_field_lookups():
    emb = FeatureEmbedding(SCHEMA)
    ids = torch.stack([torch.randint(0, f.vocab_size, (9,)) for f in SCHEMA.sparse], 1)
    dense = torch.randn(9, 2)
    out = emb(ids, dense)
    assert out.shape == (9, SCHEMA.output_dim) == (9, 16)
    start = 0
    for f, field in enumerate(SCHEMA.sparse):
        table = emb.table[start:start + field.vocab_size]
        torch.testing.assert_close(out[:, 4 * f:4 * f + 4], table[ids[:, f]])
        start += field.vocab_size
    torch.testing.assert_close(out[:, 12:], emb.dense_proj(dense))


def test_out_of_range_id_names_the_field():
    emb = FeatureEmbedding(SCHEMA)
    ids = torch.zeros(4, 3, dtype=torch.long)
    ids[2, 1] = 3
    with pytest.raises(ValueError, match=r"field 'region' id 3 at row 2 is outside \[0, 3\)"):
        emb(ids, torch.zeros(4, 2))
    ids[2, 1] = -1
    with pytest.raises(ValueError, match="field 'region' id -1"):
        emb(ids, torch.zeros(4, 2))


@pytest.mark.parametrize("ids,dense,exc,match", [
    (torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2), ValueError, r"sparse_ids must be \[B, 3\]"),
    (torch.zeros(4, 3), torch.zeros(4, 2), TypeError, "sparse_ids must be int32/int64"),
    (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 1), ValueError, r"dense must be \[B, 2\]"),
    (torch.zeros(4, 3, dtype=torch.long), torch.zeros(5, 2), ValueError, "disagree on the batch size"),
])
def test_bad_inputs(ids, dense, exc, match):
    with pytest.raises(exc, match=match):
        FeatureEmbedding(SCHEMA)(ids, dense)


def test_with_features_shares_the_embeddings():
    model = WithFeatures(FeatureEmbedding(SCHEMA), MMoE(SCHEMA.output_dim, 2, 3, (8,), (4,)))
    ids = torch.zeros(5, 3, dtype=torch.long)
    logits = model(ids, torch.randn(5, 2))
    assert logits.shape == (5, 2)
    shared = {id(p) for p in model.shared_parameters()}
    assert id(model.features.table) in shared
    assert id(model.model.towers.mlp.layers[0].weight) not in shared
