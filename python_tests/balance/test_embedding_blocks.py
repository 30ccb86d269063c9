"""Embedding tables inside the gradient methods: the task gradients taken at the lookup outputs,
equal ids summed, the Gram and the update equal to the dense computation, no dense per-task block."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels.balance import IMTLG, MGDA, PCGrad, PELTR, AlignedMTL, GradVac
from mtlkernels.balance.base import shared_list
from mtlkernels.balance.blocks import SharedBlocks
from mtlkernels.nn import FeatureEmbedding, FeatureSchema, MMoE, SparseField, WithFeatures
from mtlkernels.nn.features import BagField
from mtlkernels.nn.lookup import MAX_LOOKUPS

T = 3
METHODS = {"pcgrad": lambda: PCGrad(seed=3), "mgda": MGDA, "gradvac": lambda: GradVac(seed=3),
           "gradvac-layer": lambda: GradVac(granularity="layer", seed=3), "pe-ltr": lambda: PELTR([0.1] * T),
           "imtl-g": IMTLG, "aligned-mtl": AlignedMTL}


def make_model(bags: bool, sparse_gradients: bool = False, vocab=(4, 3, 50), seed=0):
    torch.manual_seed(seed)
    schema = FeatureSchema(sparse=tuple(SparseField(f"f{k}", v) for k, v in enumerate(vocab)), dense=("x", "y"),
                           bags=(BagField("genres", 6, "mean"), BagField("tags", 5, "sum")) if bags else (),
                           embedding_dim=4)
    features = FeatureEmbedding(schema, sparse_gradients=sparse_gradients)
    model = WithFeatures(features, MMoE(schema.output_dim, T, num_experts=3, expert_hidden=(8,), tower_hidden=(4,)))
    return model.double()


def make_batch(model, B=24, seed=1, empty_bags=False):
    g = torch.Generator().manual_seed(seed)
    schema = model.features.schema
    ids = torch.stack([torch.randint(0, f.vocab_size, (B,), generator=g) for f in schema.sparse], 1)
    dense = torch.randn(B, len(schema.dense), generator=g, dtype=torch.float64)
    bags = None
    if schema.bags:
        lengths = torch.randint(0 if empty_bags else 1, 4, (B, len(schema.bags)), generator=g)
        field = torch.arange(len(schema.bags)).repeat(B).repeat_interleave(lengths.flatten())
        vocab = torch.tensor([f.vocab_size for f in schema.bags])
        values = (torch.rand(int(lengths.sum()), generator=g) * vocab[field]).long()
        bags = (values, lengths)
    labels = torch.rand(B, T, generator=g, dtype=torch.float64)
    return ids, dense, bags, labels


def losses_of(model, batch):
    ids, dense, bags, labels = batch
    logits = model(ids, dense, bags)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)


def step(model, method, batch, shared):
    model.zero_grad(set_to_none=True)
    w = method.backward(losses_of(model, batch), shared)
    method.check_finite()
    grads = {n: (p.grad.to_dense() if p.grad is not None and p.grad.is_sparse else p.grad)
             for n, p in model.named_parameters()}
    return w, grads, method.last_gram


def assert_same_step(model, make_method, batch, sparse=False):
    """The compact step (shared = the model) against the dense one (shared = its parameter list,
    so no lookup is used; a dense gradient for the table), from the same state."""
    dense_model = copy.deepcopy(model)
    dense_model.features.sparse_gradients = False
    w, grads, G = step(model, make_method(), batch, model)
    w_ref, grads_ref, G_ref = step(dense_model, make_method(), batch, shared_list(dense_model))
    torch.testing.assert_close(G, G_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w, w_ref, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-10, atol=1e-12, msg=name)
    if sparse:
        assert model.features.table.grad.is_sparse


@pytest.mark.parametrize("bags", [False, True], ids=["ids", "bags"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_compact_table_gradients_equal_the_dense_ones(name, bags):
    model = make_model(bags)
    assert_same_step(model, METHODS[name], make_batch(model))


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "gradvac-layer"])
def test_sparse_table_gradient_equals_the_dense_one(name):
    model = make_model(bags=True, sparse_gradients=True)
    assert_same_step(model, METHODS[name], make_batch(model, empty_bags=True), sparse=True)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 40), vocab=st.integers(1, 6), bags=st.booleans(), seed=st.integers(0, 10_000))
def test_repeated_ids_are_summed_exactly(B, vocab, bags, seed):
    """Small vocabularies: most ids repeat across the rows of a batch."""
    model = make_model(bags, vocab=(vocab, 2, vocab + 1), seed=seed % 7)
    assert_same_step(model, METHODS["pcgrad"], make_batch(model, B=B, seed=seed, empty_bags=True))


def test_the_table_block_is_lookup_sized():
    model = make_model(bags=False, vocab=(4, 3, 100_000))
    batch = make_batch(model, B=16)
    blocks = SharedBlocks(losses_of(model, batch), model, shared_list(model))
    table = model.features.table
    assert all(b.numel() < T * table.numel() for b in blocks.blocks)  # 16 rows x 3 fields looked up:
    k = next(k for k, p in enumerate(blocks.leaves) if p is table)
    assert blocks.blocks[k].shape == (T, 16 * 3, 4)


def test_stale_lookups_are_ignored_and_unrecorded_ones_fall_back_to_dense():
    model = make_model(bags=False)
    batch, other = make_batch(model, seed=1), make_batch(model, seed=2)
    losses_of(model, other)  # a forward whose graph this step never uses
    assert_same_step(model, METHODS["mgda"], batch)
    for _ in range(MAX_LOOKUPS + 1):  # more forwards than are kept: the dense path, still exact
        losses_of(model, other)
    assert model.features.lookups.take() is None
    for _ in range(MAX_LOOKUPS + 1):
        losses_of(model, other)
    assert_same_step(model, METHODS["pcgrad"], batch)
    with torch.no_grad():  # nothing recorded outside grad mode
        losses_of(model, other)
    assert model.features.lookups.take() == []


def test_two_lookups_in_one_graph():
    model = make_model(bags=True)
    a, b = make_batch(model, seed=1), make_batch(model, seed=2)
    dense_model = copy.deepcopy(model)
    method, ref = PCGrad(seed=0), PCGrad(seed=0)
    method.backward(losses_of(model, a) + 2 * losses_of(model, b), model)
    ref.backward(losses_of(dense_model, a) + 2 * losses_of(dense_model, b), shared_list(dense_model))
    for p, q in zip(model.parameters(), dense_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)


def test_sparse_table_trains_with_sparse_adam():
    model = make_model(bags=True, sparse_gradients=True).float()
    batch = tuple(t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                  for t in make_batch(model))
    table = model.features.table
    opt = torch.optim.SparseAdam([table], lr=0.01)
    rest = torch.optim.Adam([p for p in model.parameters() if p is not table], lr=0.01)
    before = table.detach().clone()
    method = MGDA()
    for _ in range(2):
        opt.zero_grad(), rest.zero_grad()
        method.backward(losses_of(model, batch), model)
        method.check_finite()
        opt.step(), rest.step()
    losses_of(model, batch)
    touched = torch.zeros(table.shape[0], dtype=torch.bool)
    touched[model.features.lookups.take()[0].ids] = True
    moved = (table.detach() != before).any(1)
    assert moved[touched].all() and not moved[~touched].any()


def test_sparse_table_with_unrecorded_lookups_is_refused():
    model = make_model(bags=False, sparse_gradients=True)
    losses = losses_of(model, make_batch(model))
    model.features.lookups.take()  # as if the forward had been compiled
    with pytest.raises(ValueError, match="sparse_gradients=True was looked up where no lookup was recorded"):
        PCGrad().backward(losses, model)


def test_representation_mode_and_weighting_methods_consume_the_lookups():
    model = make_model(bags=False)
    batch = make_batch(model)
    ids, dense, bags, labels = batch
    logits, rep = model.model(model.features(ids, dense), return_representation=True)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
    MGDA().backward(losses, model, representation=rep)
    assert model.features.lookups.take() == []
    from mtlkernels.balance import EW
    EW().backward(losses_of(model, batch), model)
    assert model.features.lookups.take() == []


def test_models_copy_and_pickle_without_their_records():
    model = make_model(bags=True)
    losses_of(model, make_batch(model))
    clone = copy.deepcopy(model)
    assert clone.features.lookups.take() == []
    assert len(model.features.lookups.take()) == 1


def test_a_table_used_outside_its_forward_is_refused():
    model = make_model(bags=False)
    batch = make_batch(model)
    losses = losses_of(model, batch) + model.features.table.sum() * 1e-3  # tied somewhere else
    with pytest.raises(ValueError, match="table is also used outside its forward"):
        PCGrad().backward(losses, model)


SYNC_FREE = {**METHODS, "ew": lambda: __import__("mtlkernels").balance.EW(),
             "uw": lambda: __import__("mtlkernels").balance.UncertaintyWeighting(T).double(),
             "dwa": lambda: __import__("mtlkernels").balance.DWA(T),
             "rlw": lambda: __import__("mtlkernels").balance.RLW()}


@pytest.mark.parametrize("name", sorted(SYNC_FREE))
def test_method_backward_reads_nothing_back(name, monkeypatch):
    """No bool(tensor), .item() or .tolist() inside method.backward (the forward's id checks
    run before it): on a GPU each would wait for the device."""
    model = make_model(bags=True)
    method = SYNC_FREE[name]()
    for _ in range(2):  # the first step creates state (targets, the leaves cache)
        model.zero_grad(set_to_none=True)
        losses = losses_of(model, make_batch(model))
        with monkeypatch.context() as m:
            for attr in ("__bool__", "item", "tolist", "__int__", "__float__"):
                m.setattr(torch.Tensor, attr, lambda self, *a, _attr=attr: pytest.fail(f"Tensor.{_attr} called"))
            method.backward(losses, model)
        method.check_finite()
