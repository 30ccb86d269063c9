"""PiecewiseLinearEncoding: the paper's definition, quantile edges, point masses, errors, and its
place in FeatureEmbedding (fit, state dict, compile)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels.nn import FeatureEmbedding, FeatureSchema, SparseField
from mtlkernels.nn.numeric import PiecewiseLinearEncoding


def reference(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Component by component, as the paper writes it, on each column's distinct edges (the
    bins between repeated edges stay 0)."""
    B, D = x.shape
    n = edges.shape[1] - 1
    out = torch.zeros(B, D, n, dtype=torch.float64)
    for d in range(D):
        wide = [t for t in range(n) if float(edges[d, t + 1]) > float(edges[d, t])]
        for b in range(B):
            v = float(x[b, d])
            for t in wide:
                lo, hi = float(edges[d, t]), float(edges[d, t + 1])
                if v < lo and t != wide[0]:
                    out[b, d, t] = 0.0
                elif v >= hi and t != wide[-1]:
                    out[b, d, t] = 1.0
                else:
                    out[b, d, t] = (v - lo) / (hi - lo)
    return out.flatten(1)


def test_edges_are_the_training_quantiles():
    x = torch.randn(1001, 3, dtype=torch.float64)
    enc = PiecewiseLinearEncoding(3, 8).fit(x)
    q = torch.quantile(x, torch.linspace(0, 1, 9, dtype=torch.float64), dim=0).t()
    torch.testing.assert_close(enc.edges, q.float())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**31 - 1), st.booleans())
def test_matches_the_definition(columns, bins, rows, seed, point_mass):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(rows, columns, generator=g, dtype=torch.float64)
    if point_mass:  # most of column 0 at one value: repeated edges, bins of zero width
        train[: max(1, rows * 3 // 4), 0] = 0.5
    enc = PiecewiseLinearEncoding(columns, bins).double().fit(train)
    x = torch.cat([train, 3 * torch.randn(7, columns, generator=g, dtype=torch.float64), enc.edges.t()])
    torch.testing.assert_close(enc.encode(x), reference(x, enc.edges))
    e = reference(train, enc.edges)
    std = e.std(0, unbiased=False)
    torch.testing.assert_close(enc(x), (reference(x, enc.edges) - e.mean(0)) / torch.where(std > 1e-6, std, 1.0))


def test_inside_the_range_each_column_is_monotone_and_sums_to_its_bin_position():
    enc = PiecewiseLinearEncoding(1, 4)
    enc.edges.copy_(torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]))
    x = torch.tensor([[0.0], [0.5], [1.0], [2.25], [4.0], [-1.0], [6.0]])
    e = enc.encode(x)
    torch.testing.assert_close(e.sum(1), torch.tensor([0.0, 0.5, 1.0, 2.25, 4.0, -1.0, 6.0]))
    torch.testing.assert_close(e[3], torch.tensor([1.0, 1.0, 0.25, 0.0]))
    # outside the training range only the first (below) and last (above) bins extrapolate
    torch.testing.assert_close(e[5], torch.tensor([-1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(e[6], torch.tensor([1.0, 1.0, 1.0, 3.0]))


def test_a_constant_column_encodes_to_zeros():
    # every bin has zero width; the all-zero components have std 0 on the training rows and
    # are only centred (no division by zero)
    enc = PiecewiseLinearEncoding(1, 3).fit(torch.full((10, 1), 2.0))
    x = torch.tensor([[1.0], [2.0], [3.0]])
    torch.testing.assert_close(enc(x), torch.zeros(3, 3))


def test_repeated_edges_act_as_one_and_move_the_open_ends():
    enc = PiecewiseLinearEncoding(1, 5)
    enc.edges.copy_(torch.tensor([[0.0, 0.0, 1.0, 2.0, 2.0, 2.0]]))  # distinct edges 0, 1, 2
    x = torch.tensor([[-1.0], [0.5], [1.5], [5.0]])
    torch.testing.assert_close(enc.encode(x), torch.tensor([[0.0, -1.0, 0.0, 0.0, 0.0],
                                                            [0.0, 0.5, 0.0, 0.0, 0.0],
                                                            [0.0, 1.0, 0.5, 0.0, 0.0],
                                                            [0.0, 1.0, 4.0, 0.0, 0.0]]))


def test_the_standardisation_is_the_training_rows_and_does_not_depend_on_chunking(monkeypatch):
    train = torch.randn(301, 2, dtype=torch.float64)
    whole = PiecewiseLinearEncoding(2, 6).fit(train)
    monkeypatch.setattr("mtlkernels.nn.numeric.FIT_CHUNK", 7)
    chunked = PiecewiseLinearEncoding(2, 6).fit(train)
    torch.testing.assert_close(chunked.mean, whole.mean)
    torch.testing.assert_close(chunked.std, whole.std)
    e = whole(train.float())
    torch.testing.assert_close(e.mean(0), torch.zeros(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(e.std(0, unbiased=False), torch.ones(12), atol=1e-4, rtol=0)


def test_errors():
    with pytest.raises(ValueError, match="columns and bins must be >= 1"):
        PiecewiseLinearEncoding(2, 0)
    enc = PiecewiseLinearEncoding(2, 4)
    with pytest.raises(RuntimeError, match="never learned"):
        enc(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"x must be \[N, 2\]"):
        enc.fit(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="no training rows"):
        enc.fit(torch.zeros(0, 2))
    x = torch.zeros(5, 2)
    x[3, 1] = math.nan
    with pytest.raises(ValueError, match="'income' has the non-finite value nan at row 3"):
        enc.fit(x, ("hours", "income"))


SCHEMA = FeatureSchema(sparse=(SparseField("region", 3),), dense=("hours", "income"), embedding_dim=4,
                       dense_projection=False, dense_bins=5)


def test_feature_embedding_appends_the_encoding_after_the_values():
    emb = FeatureEmbedding(SCHEMA)
    train = torch.randn(50, 2)
    emb.fit_dense_bins(train)
    ids, dense = torch.zeros(6, 1, dtype=torch.long), torch.randn(6, 2)
    out = emb(ids, dense)
    assert out.shape == (6, SCHEMA.output_dim) == (6, 4 + 2 + 10)
    torch.testing.assert_close(out[:, 4:6], dense)
    torch.testing.assert_close(out[:, 6:], emb.dense_encoding(dense))
    projected = FeatureEmbedding(FeatureSchema(sparse=SCHEMA.sparse, dense=SCHEMA.dense, embedding_dim=4,
                                               dense_bins=5))
    assert projected.dense_proj.in_features == SCHEMA.dense_width == 12


def test_the_edges_travel_in_the_state_dict_and_compile():
    emb = FeatureEmbedding(SCHEMA)
    emb.fit_dense_bins(torch.randn(50, 2))
    fresh = FeatureEmbedding(SCHEMA)
    fresh.load_state_dict(emb.state_dict())
    ids, dense = torch.zeros(6, 1, dtype=torch.long), torch.randn(6, 2)
    torch.testing.assert_close(fresh(ids, dense), emb(ids, dense))
    compiled = torch.compile(fresh, fullgraph=True)
    torch.testing.assert_close(compiled(ids, dense), emb(ids, dense))


def test_a_float64_model_encodes_in_float64():
    schema = FeatureSchema(sparse=(), dense=("a", "b"), embedding_dim=3, dense_bins=4)
    emb = FeatureEmbedding(schema)
    emb.fit_dense_bins(torch.randn(40, 2))
    emb = emb.double()
    dense = torch.randn(5, 2, dtype=torch.float64)
    out = emb(None, dense)
    assert out.dtype == torch.float64 and out.shape == (5, 3)
    enc = emb.dense_encoding
    x = torch.cat([dense, (reference(dense, enc.edges) - enc.mean) / enc.std], 1)
    torch.testing.assert_close(out, emb.dense_proj(x))


def test_schema_refuses_negative_bins():
    with pytest.raises(ValueError, match="dense_bins must be >= 0"):
        FeatureSchema(sparse=(), dense=("a",), dense_bins=-1)
