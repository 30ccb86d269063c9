"""FeatureEmbedding: one fused lookup equals per-field lookups; clear errors."""
from __future__ import annotations

import pytest
import torch

from mtlkernels.nn import FeatureEmbedding, FeatureSchema, MMoE, SparseField, WithFeatures
from mtlkernels.nn.features import BagField

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


# ---------------------------------------------------------------------------------------------
# bag fields, unprojected dense, dtype casts
# ---------------------------------------------------------------------------------------------

def bag_schema(sparse=(("age", 5), ("region", 3)), bags=(("genres", 6, "mean"), ("tags", 4, "sum")),
               dense=("hours", "income"), projection=True, dim=3):
    return FeatureSchema(sparse=tuple(SparseField(n, v) for n, v in sparse),
                         bags=tuple(BagField(n, v, p) for n, v, p in bags), dense=dense, embedding_dim=dim,
                         dense_projection=projection)


BAG_SCHEMAS = {
    "one mean bag": bag_schema(sparse=(), bags=(("genres", 6, "mean"),), dense=()),
    "two sum bags": bag_schema(sparse=(), bags=(("tags", 4, "sum"), ("genres", 6, "sum")), dense=()),
    "sparse, mean and sum bags, dense": bag_schema(),
    "sparse, bags, unprojected dense": bag_schema(projection=False),
    "sparse, unprojected dense, no bag": bag_schema(bags=(), projection=False),
}


def random_inputs(schema, batch=9, seed=0, dtype=torch.float64):
    """Ids, dense and bags for ``schema``: bag lengths 0..4, row 0's bags and every third bag
    of the first field empty."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=g) for f in schema.sparse], 1) \
        if schema.sparse else torch.zeros(batch, 0, dtype=torch.long)
    dense = torch.randn(batch, len(schema.dense), generator=g, dtype=dtype) if schema.dense else None
    bags = None
    if schema.bags:
        lengths = torch.randint(0, 5, (batch, len(schema.bags)), generator=g)
        lengths[0] = 0
        lengths[::3, 0] = 0
        field = torch.arange(len(schema.bags)).repeat(batch).repeat_interleave(lengths.flatten())
        vocab = torch.tensor([f.vocab_size for f in schema.bags])
        values = (torch.rand(field.numel(), generator=g) * vocab[field]).long()
        bags = (values, lengths)
    return ids, dense, bags


def looped_features(emb, ids, dense, bags):
    """Row by row, field by field: the table rows of each id, bags pooled by a Python sum."""
    s, E = emb.schema, emb.schema.embedding_dim
    starts, total = [], 0
    for f in (*s.sparse, *s.bags):
        starts.append(total)
        total += f.vocab_size
    values, lengths = bags if bags is not None else (None, None)
    rows, pos = [], 0
    for b in range(ids.shape[0]):
        parts = [emb.table[starts[f] + int(ids[b, f])] for f in range(len(s.sparse))]
        for k, field in enumerate(s.bags):
            n = int(lengths[b, k])
            pooled = torch.zeros(E, dtype=emb.table.dtype)
            for i in range(n):
                pooled = pooled + emb.table[starts[len(s.sparse) + k] + int(values[pos + i])]
            pos += n
            parts.append(pooled / n if field.pooling == "mean" and n else pooled)
        if s.dense:
            x = dense[b].to(emb.table.dtype)
            parts.append(emb.dense_proj(x) if s.dense_projection else x)
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@pytest.mark.parametrize("name", list(BAG_SCHEMAS))
def test_bag_fields_match_a_row_and_field_loop(name):
    schema = BAG_SCHEMAS[name]
    emb = FeatureEmbedding(schema).double()
    with torch.no_grad():
        emb.table.normal_()  # not the tiny initial scale, so differences show
    ids, dense, bags = random_inputs(schema)
    if dense is not None:
        dense.requires_grad_(True)
    out = emb(ids, dense, bags)
    ref = looped_features(emb, ids, dense, bags)
    assert out.shape == (9, schema.output_dim) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(out)
    inputs = [p for p in emb.parameters()] + ([dense] if dense is not None else [])
    for got, want in zip(torch.autograd.grad((out * w).sum(), inputs), torch.autograd.grad((ref * w).sum(), inputs)):
        torch.testing.assert_close(got, want)


def test_bag_lookup_passes_gradcheck_on_the_table():
    schema = bag_schema(sparse=(("age", 3),), bags=(("genres", 4, "mean"), ("tags", 3, "sum")), dim=2)
    emb = FeatureEmbedding(schema).double()
    ids, dense, bags = random_inputs(schema, batch=5, seed=1)
    table = torch.randn_like(emb.table).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: torch.func.functional_call(emb, {"table": t}, (ids, dense, bags)),
                                    (table,))


def test_empty_bags_pool_to_zeros():
    schema = bag_schema(dense=())
    emb = FeatureEmbedding(schema)
    ids = torch.tensor([[1, 2], [4, 0]])
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    out = emb(ids, None, empty)
    assert torch.equal(out[:, 6:], torch.zeros(2, 6))  # both bag slots of both rows
    torch.testing.assert_close(out, looped_features(emb, ids, None, empty))
    out.sum().backward()
    bag_rows = emb.table.grad[8:]  # the rows of the bag fields (after 5 + 3 sparse rows)
    assert torch.equal(bag_rows, torch.zeros_like(bag_rows))


@pytest.mark.parametrize("field,value,pattern", [
    (1, 4, r"bag field 'tags' id 4 is outside \[0, 4\)"),
    (0, -1, r"bag field 'genres' id -1 is outside \[0, 6\)"),
    (0, 6, r"bag field 'genres' id 6 is outside \[0, 6\)"),
])
def test_out_of_range_bag_id_names_the_field(field, value, pattern):
    schema = bag_schema(dense=())
    ids = torch.zeros(3, 2, dtype=torch.long)
    lengths = torch.tensor([[1, 2], [0, 1], [2, 0]])
    values = torch.zeros(6, dtype=torch.long)
    values[{0: 4, 1: 3}[field]] = value  # row 2's first genre, or row 1's tags bag
    with pytest.raises(ValueError, match=pattern):
        FeatureEmbedding(schema)(ids, None, (values, lengths))


IDS3 = torch.zeros(3, 2, dtype=torch.long)


@pytest.mark.parametrize("ids,bags,exc,pattern", [
    (IDS3, None, ValueError, r"bags must be \(values \[nnz\], lengths \[B, 2\]\) for the bag fields \['genres', 'tags'\]"),
    (IDS3, (torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)), ValueError, r"lengths \[B, 2\]\), got"),
    (IDS3, (torch.zeros(3, dtype=torch.long), torch.ones(3, 1, dtype=torch.long)), ValueError, r"lengths \[B, 2\]\), got"),
    (IDS3, (torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long)), ValueError, r"values \[nnz\]"),
    (IDS3, (torch.zeros(5, dtype=torch.long), torch.ones(3, 2, dtype=torch.long)), ValueError, "sum to the 5 values"),
    (IDS3, (torch.zeros(6, dtype=torch.long), torch.tensor([[3, -1], [1, 1], [1, 1]])), ValueError,
     "lengths must be >= 0"),
    (IDS3, (torch.zeros(6), torch.ones(3, 2, dtype=torch.long)), TypeError, "must be int32/int64"),
    (torch.zeros(4, 2, dtype=torch.long), (torch.zeros(6, dtype=torch.long), torch.ones(3, 2, dtype=torch.long)),
     ValueError, "disagree on the batch size"),
], ids=["no bags", "lengths 1-D", "lengths of 1 field", "values 2-D", "lengths vs values", "negative length",
        "float values", "batch sizes"])
def test_bad_bag_inputs(ids, bags, exc, pattern):
    with pytest.raises(exc, match=pattern):
        FeatureEmbedding(bag_schema(dense=()))(ids, None, bags)


def test_bags_without_bag_fields_are_refused():
    with pytest.raises(ValueError, match="bags given but the schema has no bag field"):
        FeatureEmbedding(SCHEMA)(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2),
                                 (torch.zeros(0, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)))


def test_int32_ids_and_lengths_give_the_same_output():
    schema = bag_schema()
    emb = FeatureEmbedding(schema)
    ids, dense, (values, lengths) = random_inputs(schema, dtype=torch.float32)
    torch.testing.assert_close(emb(ids.int(), dense, (values.int(), lengths.int())), emb(ids, dense, (values, lengths)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("projection", [True, False])
@pytest.mark.parametrize("with_bags", [True, False])
def test_float64_dense_is_cast_to_a_float32_model(projection, with_bags):
    schema = bag_schema(projection=projection, bags=(("genres", 6, "mean"),) if with_bags else ())
    emb = FeatureEmbedding(schema)
    ids, dense, bags = random_inputs(schema, dtype=torch.float64)
    out = emb(ids, dense, bags)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, emb(ids, dense.float(), bags), rtol=0, atol=0)


def test_unprojected_dense_is_passed_through():
    schema = bag_schema(projection=False)
    emb = FeatureEmbedding(schema)
    assert emb.dense_proj is None and [n for n, _ in emb.named_parameters()] == ["table"]
    assert schema.output_dim == 4 * 3 + 2
    ids, dense, bags = random_inputs(schema, dtype=torch.float32)
    out = emb(ids, dense, bags)
    assert out.shape == (9, 14)
    assert torch.equal(out[:, 12:], dense)
    dense_only = FeatureEmbedding(FeatureSchema(sparse=(), dense=("a", "b", "c"), dense_projection=False))
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(dense_only(None, x), x.float())


def test_bag_schema_errors():
    with pytest.raises(ValueError, match="bag field 'g' pooling must be 'mean' or 'sum', got 'max'"):
        FeatureSchema(sparse=(), bags=(BagField("g", 3, "max"),))
    with pytest.raises(ValueError, match="field 'g' has vocab_size 0"):
        FeatureSchema(sparse=(), bags=(BagField("g", 0),))
