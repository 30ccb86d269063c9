"""Every op family on a CUDA device: the compiled CUDA kernels and the Triton kernels against the
reference, forward and backward, over dtypes, shapes and strides; a model step end to end.
Skipped without a GPU (``scripts/gpu_check.sh`` runs them on one)."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _extension
from mtlkernels import nn as mnn
from mtlkernels.ops import block_grams, combine_, gate_mix, gram, grouped_mlp
from mtlkernels.ops import solvers as S
from python_tests.nn.gates_helper import randomised

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = "cuda"
F64 = torch.float64
GPU_BACKENDS = [pytest.param("native", marks=pytest.mark.skipif(
                    not _extension.native_available() or not _extension.native_has_kernel("gate_mix", "cuda"),
                    reason="mtlkernels._C built without CUDA")),
                pytest.param("triton", marks=pytest.mark.skipif(not _extension.triton_installed(),
                                                                reason="triton is not installed"))]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2), torch.float16: dict(rtol=5e-3, atol=5e-3)}


def grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,T,X,D,masked,strided", [(1, 1, 1, 1, False, False), (37, 3, 5, 24, False, False),
                                                    (256, 4, 8, 128, True, False), (513, 2, 6, 65, True, True)])
def test_gate_mix(backend, dtype, B, T, X, D, masked, strided):
    g = torch.Generator(device=CUDA).manual_seed(B + X)
    experts = torch.randn(B, X, D if not strided else 2 * D, device=CUDA, dtype=dtype, generator=g)
    if strided:
        experts = experts[:, :, ::2]
    logits = torch.randn(B, T, X, device=CUDA, dtype=dtype, generator=g)
    mask = None
    if masked:
        mask = torch.rand(T, X, device=CUDA, generator=g) < 0.6
        mask[:, 0] = True
    e1, l1 = experts.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()
    e2, l2 = experts.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()
    out = gate_mix(e1, l1, expert_mask=mask, backend=backend)
    ref = gate_mix(e2, l2, expert_mask=mask, backend="reference")
    torch.testing.assert_close(out, ref, **TOL[dtype])
    go = torch.randn_like(out)
    for a, b in zip(grads(out, [e1, l1], go), grads(ref, [e2, l2], go)):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("B,G,widths", [(1, 1, (3, 2)), (64, 8, (96, 64, 32)), (300, 3, (17, 33, 5))])
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "ppnet-gates"])
def test_grouped_mlp(dtype, shared_input, B, G, widths, gated):
    if not _extension.native_available() or not _extension.native_has_kernel("grouped_mlp", "cuda"):
        pytest.skip("mtlkernels._C built without CUDA")
    torch.manual_seed(B + G)
    x = torch.randn(B, widths[0], device=CUDA, dtype=dtype) if shared_input else \
        torch.randn(B, G, widths[0], device=CUDA, dtype=dtype)
    ws, bs = [], []
    for i in range(len(widths) - 1):
        shape = (widths[i], G, widths[i + 1]) if shared_input and i == 0 else (G, widths[i], widths[i + 1])
        ws.append((0.3 * torch.randn(shape, device=CUDA, dtype=dtype)).requires_grad_())
        bs.append(torch.randn(G, widths[i + 1], device=CUDA, dtype=dtype).requires_grad_())
    relu = [True] * (len(ws) - 1) + [False]
    x = x.requires_grad_()
    us = [torch.randn(B, G, w, device=CUDA, dtype=dtype).requires_grad_() for w in widths[1:]] if gated else None
    out = grouped_mlp(x, ws, bs, relu, shared_input=shared_input, gates=us, backend="native")
    ref = grouped_mlp(x, ws, bs, relu, shared_input=shared_input, gates=us, backend="reference")
    torch.testing.assert_close(out, ref, **TOL[dtype])
    go = torch.randn_like(out)
    leaves = [x, *ws, *bs, *(us or [])]
    for a, b in zip(grads(out, leaves, go), grads(ref, leaves, go)):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 2, 5, 16])
def test_gram_block_grams_and_combine(backend, dtype, T):
    torch.manual_seed(T)
    blocks = [torch.randn(T, 3, 7, device=CUDA, dtype=dtype), torch.randn(T, 20_001, device=CUDA, dtype=dtype),
              torch.randn(T, 2, 64, device=CUDA, dtype=dtype)[:, :, ::2]]
    want = sum(b.reshape(T, -1).double() @ b.reshape(T, -1).double().t() for b in blocks)
    got = gram(blocks, backend=backend)
    assert got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-12 if dtype == F64 else 1e-6, atol=1e-9)
    torch.testing.assert_close(block_grams(blocks, backend=backend).sum(0), got, rtol=1e-12, atol=1e-9)
    w = torch.randn(T, dtype=F64, device=CUDA)
    out = [torch.randn(b.shape[1:], device=CUDA, dtype=dtype) for b in blocks]
    expected = [o.double() + torch.einsum("t,t...->...", w, b.double()) for o, b in zip(out, blocks)]
    combine_(blocks, w, out, accumulate=True, backend=backend)
    for o, e in zip(out, expected):
        torch.testing.assert_close(o.double(), e, **TOL[dtype])


def test_gram_accumulates_float64_exactly():
    """Rows 1 + 1e-9 k: float staging would lose the offsets (the kernel stages in double)."""
    if not _extension.native_available() or not _extension.native_has_kernel("gram", "cuda"):
        pytest.skip("mtlkernels._C built without CUDA")
    k = torch.arange(50_000, device=CUDA, dtype=F64)
    rows = torch.stack([1 + 1e-9 * (k % 97), 1 + 1e-9 * (k % 89)])
    got = gram([rows], backend="native")
    want = gram([rows.cpu()], backend="reference")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("T", [2, 3, 7])
def test_solvers_match_the_cpu_kernels(T):
    if not _extension.native_available() or not _extension.native_has_kernel("pcgrad_weights", "cuda"):
        pytest.skip("mtlkernels._C built without CUDA")
    torch.manual_seed(T)
    J = torch.randn(64, T, 9, dtype=F64)
    G = J @ J.transpose(1, 2)
    order = S.random_orders(64, T)
    target = torch.rand(64, T, T, dtype=F64) - 0.5
    lower = torch.full((64, T), 0.5 / T, dtype=F64)
    cases = [(lambda g, o, t, lb: S.pcgrad_weights(g, o, backend="native"), 1e-12),
             (lambda g, o, t, lb: S.gradvac_weights(g, o, t, 0.5, backend="native")[0], 1e-12),
             (lambda g, o, t, lb: S.gradvac_weights(g, o, t, 0.5, backend="native")[1], 1e-12),
             (lambda g, o, t, lb: S.mgda_weights(g, backend="native"), 1e-9),
             (lambda g, o, t, lb: S.min_norm_weights(g, backend="native"), 1e-9),
             (lambda g, o, t, lb: S.peltr_weights(g, lb, backend="native"), 1e-9),
             (lambda g, o, t, lb: S.cagrad_weights(g, 0.5, backend="native"), 1e-9),
             (lambda g, o, t, lb: S.dual_cone_weights(g + 1e-3 * torch.eye(T, dtype=F64, device=g.device),
                                                      torch.diag_embed(lb), backend="native"), 1e-9)]
    for fn, tol in cases:
        cpu = fn(G, order, target, lower)
        gpu = fn(G.to(CUDA), order.to(CUDA), target.to(CUDA), lower.to(CUDA))
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol)


def test_counter_keys_match_the_cpu():
    from mtlkernels.ops.counter_keys import counter_keys

    for seed, draw, n in ((0, 0, 1), (2**62 - 1, 12345, 1000), (7, 3, 300_000)):
        cpu = counter_keys(torch.tensor(seed), torch.tensor(draw), n)
        gpu = counter_keys(torch.tensor(seed, device=CUDA), torch.tensor(draw, device=CUDA), n)
        assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("make", [lambda: mnn.MMoE(40, 3, 6, (64, 32), (16,)),
                                  lambda: mnn.PLE(40, 2, [2, 1], 2, (32,), (8,), num_levels=2),
                                  lambda: mnn.PEPNet(40, 3, [0, 1, 2, 3], [4, 5], (64, 32)),
                                  lambda: mnn.MMoE(40, 2, 4, (32, 16), (8,), expert_gate_columns=[0, 1]),
                                  lambda: mnn.PLE(40, 2, [2, 1], 2, (32,), (8,), expert_gate_columns=[2, 3])])
def test_a_model_step_on_the_gpu_matches_the_cpu(make):
    torch.manual_seed(0)
    model = randomised(make()).double()  # gates away from their initial 1
    x = torch.randn(128, 40, dtype=F64)
    params = list(model.parameters())
    cpu_out = model(x)
    cpu_grads = torch.autograd.grad(cpu_out.square().sum(), params)
    model = model.to(CUDA)
    gpu_out = model(x.to(CUDA))
    gpu_grads = torch.autograd.grad(gpu_out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=1e-9, atol=1e-10)
    for a, b in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("T", [2, 4])
def test_per_task_backward_of_a_model_matches_the_cpu(T):
    """is_grads_batched through gate_mix and grouped_mlp on the GPU (their [N, ...] task-gradient
    backward: one launch per task for gate_mix, one product over the groups for grouped_mlp)."""
    from mtlkernels.balance import task_gradients
    if not _extension.native_available() or not _extension.native_has_kernel("gate_mix", "cuda"):
        pytest.skip("mtlkernels._C built without CUDA")
    torch.manual_seed(T)
    model = mnn.MMoE(24, T, 4, (32, 16), (8,)).double()
    x = torch.randn(96, 24, dtype=F64)
    params = list(model.shared_parameters())
    cpu = task_gradients(model(x).square().mean(0), params)
    model = model.to(CUDA)
    gpu = task_gradients(model(x.to(CUDA)).square().mean(0), list(model.shared_parameters()))
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-10)
