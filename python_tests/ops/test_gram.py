"""gram / block_grams / combine_: parity with the reference, precision, in-place semantics, errors."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _extension
from mtlkernels.ops import block_grams, combine_, gram
from mtlkernels.reference import gram as reference

needs_native = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))
BACKENDS = [pytest.param("native", marks=needs_native), "triton", "reference"]
SHAPES = [[()], [(3,)], [(5, 7), (7,), ()], [(64, 33), (33,), (2049,)], [(4, 3, 2, 5)]]
# error of G_ij relative to ||g_i|| ||g_j|| (off-diagonals can cancel, so plain rtol is meaningless):
# fp32 products summed in fp32 within 1024-element chunks, chunks summed in fp64
SCALED_TOL = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-6}


def assert_gram_close(G, expected, dtype):
    scale = torch.sqrt(torch.diagonal(expected)[:, None] * torch.diagonal(expected)[None, :]).clamp_min(1e-30)
    err = ((G - expected).abs() / scale).max().item()
    assert err <= SCALED_TOL[dtype], err


def make_blocks(T, shapes, dtype=torch.float32):
    return [torch.randn(T, *s, dtype=torch.float64).to(dtype) for s in shapes]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T", [1, 2, 5, 16])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_gram_and_block_grams_match_reference(backend, dtype, T, shapes):
    blocks = make_blocks(T, shapes, dtype)
    expected = reference.gram([b.double() for b in blocks])  # exact products of the rounded inputs
    G = gram(blocks, backend=backend)
    assert G.dtype == torch.float64 and G.shape == (T, T)
    assert_gram_close(G, expected, dtype)
    torch.testing.assert_close(G, G.T, rtol=0, atol=0)
    Gk = block_grams(blocks, backend=backend)
    assert Gk.shape == (len(blocks), T, T)
    assert_gram_close(Gk.sum(0), expected, dtype)


@needs_native
def test_gram_accumulates_in_float64_at_large_p():
    """Plain fp32 accumulation loses ~1e-4 on ||g||^2 at P = 1e7 (PERF-BASELINE B5); the chunked
    kernel must stay near fp32 rounding of the inputs."""
    J = torch.rand(2, 4_000_000) + 0.5  # all-positive sums: the worst case for fp32 accumulation
    G = gram([J])
    exact = reference.gram([J])
    rel = ((G - exact).abs() / exact.abs()).max().item()
    assert rel < 1e-6, rel


@needs_native
def test_non_contiguous_blocks():
    base = torch.randn(6, 3, 40)
    blocks = [base.transpose(1, 2), base[:, :, ::3]]
    assert not blocks[0].is_contiguous()
    assert_gram_close(gram(blocks), reference.gram(blocks), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_combine_accumulates_in_place(backend, dtype):
    T = 4
    blocks = make_blocks(T, [(5, 7), (2049,), ()], dtype)
    start = [torch.randn(b.shape[1:], dtype=torch.float64).to(dtype) for b in blocks]
    out = [s.clone() for s in start]
    ptrs = [o.data_ptr() for o in out]
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    combine_(blocks, w, out, backend=backend)
    assert [o.data_ptr() for o in out] == ptrs
    for b, s, o in zip(blocks, start, out):
        expected = s.double() + torch.tensordot(w, b.double(), dims=1)
        tol = dict(rtol=1e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o.double(), expected, **tol)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: gram([]), ValueError, "non-empty list"),
    (lambda: gram(torch.randn(2, 3)), ValueError, "non-empty list"),
    (lambda: gram([torch.randn(2, 3), torch.randn(3, 3)]), ValueError, r"blocks\[1\] must be \[T = 2, \.\.\.\]"),
    (lambda: gram([torch.ones(2, 3, dtype=torch.int64)]), TypeError, r"blocks\[0\] must be floating point"),
    (lambda: gram([torch.randn(2, 3), torch.randn(2, 3, device="meta")]), ValueError, r"blocks\[1\] is on meta"),
    (lambda: combine_([torch.randn(2, 3)], torch.ones(3), [torch.zeros(3)]), ValueError, r"weights must be a \[T\] = \[2\]"),
    (lambda: combine_([torch.randn(2, 3)], torch.ones(2), [torch.zeros(4)]), ValueError, r"out\[0\] must be \(3,\)"),
    (lambda: combine_([torch.randn(2, 3)], torch.ones(2), []), ValueError, "out has 0 tensors for 1 blocks"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@needs_native
def test_opcheck():
    blocks = make_blocks(3, [(4, 5), (6,)], torch.float64)
    torch.library.opcheck(torch.ops.mtlk.gram.default, (blocks,))
    torch.library.opcheck(torch.ops.mtlk.block_grams.default, (blocks,))
    out = [torch.zeros(4, 5, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)]
    torch.library.opcheck(torch.ops.mtlk.combine_.default, (blocks, torch.ones(3, dtype=torch.float64), out))


def test_opcheck_triton():
    from mtlkernels.triton import gram as _  # noqa: F401  registers the ops

    blocks = make_blocks(3, [(4, 5), (6,)], torch.float64)
    torch.library.opcheck(torch.ops.mtlk.gram_triton.default, (blocks,))
    torch.library.opcheck(torch.ops.mtlk.block_grams_triton.default, (blocks,))
    out = [torch.zeros(4, 5, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)]
    torch.library.opcheck(torch.ops.mtlk.combine_triton_.default, (blocks, torch.ones(3, dtype=torch.float64), out))


@pytest.mark.parametrize("backend", BACKENDS)
def test_combine_overwrite_mode_ignores_the_old_contents(backend):
    blocks = make_blocks(3, [(4, 5), (1031,)], torch.float32)
    w = torch.tensor([1.0, -2.0, 0.5])
    out = [torch.full(b.shape[1:], float("nan")) for b in blocks]  # garbage, as in torch.empty
    combine_(blocks, w, out, accumulate=False, backend=backend)
    for b, o in zip(blocks, out):
        torch.testing.assert_close(o, torch.tensordot(w, b, dims=1), rtol=1e-5, atol=1e-5)
