"""grouped_mlp with PPNet gates (a layer's output times 2 sigmoid(u), fused into its epilogue):
parity with the einsum reference for outputs and every gradient, gate logits included, over
layouts, depths, dtypes, sizes (the parallel row blocks), partial gating and strided gates;
gradcheck, opcheck, compile, the per-task backward (N gradients at once, is_grads_batched,
torch.vmap), extreme logits, and errors."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _extension
from mtlkernels.ops import grouped_mlp
from mtlkernels.reference.grouped_mlp import grouped_mlp as reference

pytestmark = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}
# (B, G, widths): tiny (towers: the small-group path without gates), Census-like, and large
# enough that the epilogues run in parallel row blocks
CASES = [(7, 3, [5, 4, 6, 2]), (33, 2, [16, 32, 16, 1]), (260, 2, [130, 129, 125, 3])]


def make(B, G, widths, shared, dtype, gated):
    """x, weights, biases and gate logits (None for the layers not in ``gated``)."""
    L = len(widths) - 1
    x = torch.randn(B, widths[0]) if shared else torch.randn(B, G, widths[0])
    weights = [torch.randn(widths[0], G, widths[1]) if shared else torch.randn(G, widths[0], widths[1])]
    weights += [torch.randn(G, widths[l], widths[l + 1]) for l in range(1, L)]
    weights = [w * widths[l] ** -0.5 for l, w in enumerate(weights)]
    biases = [torch.randn(G, widths[l + 1]) for l in range(L)]
    gates = [2 * torch.randn(B, G, widths[l + 1]) if l in gated else None for l in range(L)]
    cast = lambda t: None if t is None else t.to(dtype).requires_grad_()  # noqa: E731
    return cast(x), [cast(w) for w in weights], [cast(b) for b in biases], [cast(u) for u in gates]


def grads_of(out, x, weights, biases, gates, cot):
    leaves = [x, *weights, *biases, *(u for u in gates if u is not None)]
    return torch.autograd.grad(out, leaves, cot, retain_graph=True)


def close(got, want, dtype):
    """float32/float64 elementwise; bfloat16 in norm (every intermediate is rounded to 8 bits)."""
    if dtype == torch.bfloat16:
        assert torch.linalg.vector_norm(got.double() - want) <= 3e-2 * torch.linalg.vector_norm(want) + 1e-3
    else:
        torch.testing.assert_close(got.double(), want, **TOL[dtype])


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
@pytest.mark.parametrize("gated", [(0,), (0, 1, 2), (1, 2), (2,)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_output_and_every_gradient_match_reference(case, shared, gated, dtype):
    B, G, widths = CASES[case]
    x, weights, biases, gates = make(B, G, widths, shared, dtype, gated)
    # bfloat16 without ReLUs: a pre-activation rounded across 0 flips its ReLU, and then a few
    # gradient entries differ by far more than the rounding (up to 7 % in norm, with and without gates)
    relu = [False] * 3 if dtype == torch.bfloat16 else [True, True, False]
    out = grouped_mlp(x, weights, biases, relu, shared_input=shared, gates=gates)
    cot = torch.randn_like(out)
    got = grads_of(out, x, weights, biases, gates, cot)
    as64 = lambda ts: [None if t is None else t.detach().double().requires_grad_() for t in ts]  # noqa: E731
    (x64,), w64, b64, u64 = as64([x]), as64(weights), as64(biases), as64(gates)
    expected = reference(x64, w64, b64, relu, shared, u64)[-1]
    close(out, expected, dtype)
    for g, w in zip(got, grads_of(expected, x64, w64, b64, u64, cot.double())):
        close(g, w, dtype)


def test_zero_logits_are_the_identity_and_the_ungated_op():
    """u = 0 gives gates of exactly 1: the output equals the ungated op's (the small-group path
    of these towers), as PEPNet's zero-initialised last gate layer relies on."""
    x, weights, biases, _ = make(9, 4, [8, 16, 1], True, torch.float32, ())
    gates = [torch.zeros(9, 4, 16), None]
    plain = grouped_mlp(x, weights, biases, [True, False], shared_input=True)
    gated = grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=gates)
    torch.testing.assert_close(gated, plain, rtol=1e-6, atol=1e-6)
    none = grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=[None, None])
    torch.testing.assert_close(none, plain, rtol=0, atol=0)


def test_strided_gate_logits_read_in_place():
    """Gates sliced out of one wider gate-network output (what PEPNet passes): same result as
    contiguous copies."""
    x, weights, biases, _ = make(21, 3, [6, 5, 4], False, torch.float64, ())
    wide = torch.randn(21, 3, 12, dtype=torch.float64)
    views = [wide[..., :5], wide[..., 7:11]]
    out = grouped_mlp(x, weights, biases, [True, False], shared_input=False, gates=views)
    copies = grouped_mlp(x, weights, biases, [True, False], shared_input=False, gates=[v.contiguous() for v in views])
    torch.testing.assert_close(out, copies, rtol=0, atol=0)


def test_extreme_logits_saturate_without_nan():
    """u = +-100 and -inf: gates 2 and 0, finite gradients (0 where saturated); NaN logits
    propagate to their own outputs only."""
    x, weights, biases, _ = make(6, 2, [4, 3, 2], True, torch.float32, ())
    u = torch.tensor([100.0, -100.0, float("-inf")]).repeat(6, 2, 1).requires_grad_()
    out = grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=[u, None])
    expected = reference(x, weights, biases, [True, False], True, [u, None])[-1]
    torch.testing.assert_close(out, expected)
    (gu,) = torch.autograd.grad(out.sum(), [u])
    assert torch.isfinite(gu).all() and gu.abs().max() < 1e-30
    nan_u = u.detach().clone()
    nan_u[3, 1, 0] = float("nan")
    out = grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=[nan_u, None])
    assert torch.isnan(out[3, 1]).all() and not torch.isnan(out[[0, 1, 2, 4, 5]]).any()


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_gradcheck(shared):
    x, weights, biases, gates = make(5, 2, [4, 3, 3, 2], shared, torch.float64, (0, 2))

    def f(x, w0, w1, w2, b0, b1, b2, u0, u2):
        return grouped_mlp(x, [w0, w1, w2], [b0, b1, b2], [True, False, False], shared_input=shared,
                           gates=[u0, None, u2])

    assert torch.autograd.gradcheck(f, (x, *weights, *biases, gates[0], gates[2]))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_opcheck_forward_and_backward(shared):
    x, weights, biases, gates = make(7, 3, [5, 4, 2], shared, torch.float64, (0,))
    torch.library.opcheck(torch.ops.mtlk.grouped_mlp.default, (x, weights, biases, [True, False], shared, gates))
    det = lambda ts: [None if t is None else t.detach() for t in ts]  # noqa: E731
    acts = torch.ops.mtlk.grouped_mlp(x.detach(), det(weights), det(biases), [True, False], shared, det(gates))
    for lead in ((), (3,)):
        grads = [None, torch.randn(*lead, *acts[1].shape, dtype=torch.float64)]
        torch.library.opcheck(torch.ops.mtlk.grouped_mlp_backward.default,
                              (grads, x.detach(), det(weights), det(biases), acts, [True, False], shared, True, True,
                               det(gates)))


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    x, weights, biases, gates = make(9, 2, [6, 5, 1], True, torch.float32, (0,))

    def f(x, u):
        return grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=[u, None]).square().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    got = torch.autograd.grad(compiled(x, gates[0]), [x, gates[0], *weights])
    want = torch.autograd.grad(f(x, gates[0]), [x, gates[0], *weights])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_n_task_gradients_at_once_equal_one_call_per_task(case, shared):
    B, G, widths = CASES[case]
    x, weights, biases, gates = make(B, G, widths, shared, torch.float64, (0, 2))
    relu = [True, False, True]
    det = lambda ts: [None if t is None else t.detach() for t in ts]  # noqa: E731
    x, weights, biases, gates = x.detach(), det(weights), det(biases), det(gates)
    acts = torch.ops.mtlk.grouped_mlp(x, weights, biases, relu, shared, gates)
    grads = [torch.randn(4, *a.shape, dtype=torch.float64) for a in acts]
    gx, gw, gb, gu = torch.ops.mtlk.grouped_mlp_backward(grads, x, weights, biases, acts, relu, shared, True, True,
                                                         gates)
    assert gu[1].shape == (0,) and gu[0].shape == (4, *gates[0].shape)
    for k in range(4):
        ex, ew, eb, eu = torch.ops.mtlk.grouped_mlp_backward([g[k] for g in grads], x, weights, biases, acts, relu,
                                                             shared, True, True, gates)
        for a, e in zip([gx, *gw, *gb, gu[0], gu[2]], [ex, *ew, *eb, eu[0], eu[2]]):
            torch.testing.assert_close(a[k], e, **TOL[torch.float64])


@pytest.mark.parametrize("how", ["is_grads_batched", "torch.vmap"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_per_task_backward_reaches_the_gate_logits(how, shared):
    """The per-task backward of the balancing methods (legacy vmap) and TorchJD's (torch.vmap)
    through a gated stack into every input, gate logits included: equal to one backward per task."""
    x, weights, biases, gates = make(8, 3, [5, 4, 3, 2], shared, torch.float64, (0, 1))
    out = grouped_mlp(x, weights, biases, [True, True, False], shared_input=shared, gates=gates)
    leaves = [x, *weights, *biases, gates[0], gates[1]]
    cot = torch.randn(4, *out.shape, dtype=torch.float64)
    if how == "is_grads_batched":
        batched = torch.autograd.grad(out, leaves, cot, is_grads_batched=True, retain_graph=True)
    else:
        batched = torch.vmap(lambda g: torch.autograd.grad(out, leaves, g, retain_graph=True))(cot)
    for t in range(4):
        for a, s in zip(batched, torch.autograd.grad(out, leaves, cot[t], retain_graph=True)):
            torch.testing.assert_close(a[t], s)


def test_vmap_of_the_forward_over_inputs_and_gates():
    x, weights, biases, gates = make(6, 3, [5, 4, 2], True, torch.float64, (0,))
    xs, us = torch.stack([x, 2 * x, -x]).detach(), torch.stack([gates[0], -gates[0], 0 * gates[0]]).detach()
    f = torch.func.vmap(lambda x, u: grouped_mlp(x, weights, biases, [True, False], shared_input=True,
                                                 gates=[u, None]))
    out = f(xs, us)
    for k in range(3):
        torch.testing.assert_close(out[k], grouped_mlp(xs[k], weights, biases, [True, False], shared_input=True,
                                                       gates=[us[k], None]))


def test_empty_batch():
    x, weights, biases, gates = make(0, 3, [5, 4, 2], True, torch.float32, (0, 1))
    out = grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=gates)
    assert out.shape == (0, 3, 2)
    grads = torch.autograd.grad(out.sum(), [*weights, *biases, gates[0]])
    assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_bad_gates_name_the_argument(backend):
    x, weights, biases, gates = make(7, 3, [5, 4, 2], True, torch.float32, (0,))
    with pytest.raises(ValueError, match=r"gates has 1 entries for 2 layers"):
        grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=gates[:1], backend=backend)
    with pytest.raises(ValueError, match=r"gates\[1\] must be \[B, G, out\] = \[7, 3, 2\], got \(?\[?7, 3, 4"):
        grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=[None, gates[0]], backend=backend)
    with pytest.raises((TypeError, ValueError), match=r"gates\[0\].*(dtype|Double|float64)"):
        grouped_mlp(x, weights, biases, [True, False], shared_input=True, gates=[gates[0].double(), None],
                    backend=backend)
