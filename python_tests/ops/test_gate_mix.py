"""gate_mix: parity of every backend with the reference, forward and backward, over
shapes, dtypes, strides and masks; gradcheck; opcheck; compile; export; vmap."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _extension
from mtlkernels.ops import gate_mix
from mtlkernels.reference import gate_mix as reference_gate_mix

from .gate_mix_cases import (DTYPES, NATIVE_SHAPES, TOL, TRITON_SHAPES, make_inputs, ple_mask,
                             reference_f64)

needs_native = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))
needs_triton = pytest.mark.skipif(not _extension.triton_installed(), reason="triton not installed")

BACKEND_CASES = (
    [pytest.param("native", s, marks=needs_native, id=f"native-{s}") for s in NATIVE_SHAPES]
    + [pytest.param("triton", s, marks=needs_triton, id=f"triton-{s}") for s in TRITON_SHAPES]
    + [pytest.param("reference", s, id=f"reference-{s}") for s in TRITON_SHAPES]
)


def run_forward_backward(backend, experts, logits, expert_mask, return_probs):
    e = experts.clone().requires_grad_()
    lg = logits.clone().requires_grad_()
    res = gate_mix(e, lg, expert_mask=expert_mask, return_probs=return_probs, backend=backend)
    out, probs = res if return_probs else (res, None)
    grad_out = torch.randn_like(out)
    grad_probs = torch.randn_like(probs) if return_probs else None
    outputs, grads = [out], [grad_out]
    if return_probs:
        outputs.append(probs)
        grads.append(grad_probs)
    ge, gl = torch.autograd.grad(outputs, (e, lg), grads)
    return out, probs, ge, gl, grad_out, grad_probs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,shape", BACKEND_CASES)
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_parity_with_reference(backend, shape, dtype, masked):
    experts, logits, mask = make_inputs(*shape, dtype=dtype, mask=masked)
    return_probs = masked  # covers both: probs (and their gradient) with the masked cases
    out, probs, ge, gl, grad_out, grad_probs = run_forward_backward(backend, experts, logits, mask, return_probs)
    ref_out, ref_probs, ref_ge, ref_gl = reference_f64(experts, logits, mask, grad_out, grad_probs)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref_out.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref_out, **tol)
    torch.testing.assert_close(ge.double(), ref_ge, **tol)
    # logit gradients sum D products: scale the tolerance with sqrt(D)
    D = shape[3]
    torch.testing.assert_close(gl.double(), ref_gl, atol=tol["atol"] * max(1.0, D ** 0.5), rtol=tol["rtol"])
    if return_probs:
        torch.testing.assert_close(probs.double(), ref_probs, **tol)


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton), "reference"])
def test_masked_experts_get_zero_probability_and_gradient(backend):
    mask = ple_mask(tasks=3, own=2, shared=2)  # 8 experts, task t sees 2 own + 2 shared
    experts, logits, _ = make_inputs(6, 8, 3, 20)
    out, probs, ge, gl, _, _ = run_forward_backward(backend, experts, logits, mask, return_probs=True)
    hidden = ~mask.expand_as(probs)
    assert torch.all(probs[hidden] == 0)
    assert torch.all(gl[hidden] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, 3))
    # task t mixes exactly its own and the shared experts: perturbing a hidden expert of
    # task 0 (expert 2 belongs to task 1) leaves task 0's output unchanged
    bumped = experts.clone()
    bumped[:, 2] += 100.0
    out2 = gate_mix(bumped, logits, expert_mask=mask, backend=backend)
    torch.testing.assert_close(out2[:, 0], out[:, 0].detach())
    assert not torch.allclose(out2[:, 1], out[:, 1].detach())


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton), "reference"])
def test_minus_inf_logit_on_visible_expert_is_a_mask(backend):
    experts, logits, _ = make_inputs(4, 5, 2, 8, dtype=torch.float64)
    logits[:, :, 1] = float("-inf")
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 1] = False
    torch.testing.assert_close(gate_mix(experts, logits, backend=backend),
                               gate_mix(experts, logits.nan_to_num(neginf=0.0), expert_mask=mask, backend=backend))


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton), "reference"])
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_non_contiguous_inputs(backend, layout):
    B, X, T, D = 9, 6, 3, 24
    if layout == "transposed":
        experts = torch.randn(B, D, X).transpose(1, 2)
        logits = torch.randn(T, B, X).transpose(0, 1)
    elif layout == "sliced":
        experts = torch.randn(B, X, 2 * D)[:, :, ::2]
        logits = torch.randn(B, T + 2, X)[:, 1:T + 1]
    else:  # stride-0 batch dim
        experts = torch.randn(1, X, D).expand(B, X, D)
        logits = torch.randn(B, T, 1).expand(B, T, X)
    assert not experts.is_contiguous() and not logits.is_contiguous()
    out = gate_mix(experts, logits, backend=backend)
    ref_out, _ = reference_f64(experts, logits)
    torch.testing.assert_close(out.double(), ref_out, **TOL[torch.float32])
    # backward with non-contiguous saved inputs and a non-contiguous grad_out
    grad_out = torch.randn(B, T, D)
    e = experts.detach().requires_grad_()  # detach keeps the strides
    lg = logits.detach().requires_grad_()
    out = gate_mix(e, lg, backend=backend)
    ge, gl = torch.autograd.grad(out, (e, lg), grad_out.transpose(0, 1).contiguous().transpose(0, 1))
    _, _, ref_ge, ref_gl = reference_f64(experts, logits, grad_out=grad_out)
    torch.testing.assert_close(ge.double(), ref_ge, **TOL[torch.float32])
    torch.testing.assert_close(gl.double(), ref_gl, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton), "reference"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_float64(backend, masked):
    experts, logits, mask = make_inputs(4, 5, 3, 7, dtype=torch.float64, mask=masked)
    experts.requires_grad_()
    logits.requires_grad_()

    def f(e, lg):
        out, probs = gate_mix(e, lg, expert_mask=mask, return_probs=True, backend=backend)
        return out, probs

    assert torch.autograd.gradcheck(f, (experts, logits))


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton), "reference"])
def test_empty_batch(backend):
    experts = torch.randn(0, 4, 8, requires_grad=True)
    logits = torch.randn(0, 3, 4, requires_grad=True)
    out = gate_mix(experts, logits, backend=backend)
    assert out.shape == (0, 3, 8)
    ge, gl = torch.autograd.grad(out.sum(), (experts, logits))
    assert ge.shape == experts.shape and gl.shape == logits.shape


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton), "reference"])
def test_single_expert_and_single_task(backend):
    experts, logits, _ = make_inputs(5, 1, 1, 9, dtype=torch.float64)
    out, probs = gate_mix(experts, logits, return_probs=True, backend=backend)
    torch.testing.assert_close(out, experts)  # one expert: weight 1
    assert torch.all(probs == 1)


@needs_native
def test_probs_only_backward():
    """Gradient through the returned probabilities alone (e.g. a load-balancing loss)."""
    experts, logits, _ = make_inputs(6, 4, 2, 5, dtype=torch.float64)
    lg = logits.clone().requires_grad_()
    _, probs = gate_mix(experts, lg, return_probs=True, backend="native")
    (g,) = torch.autograd.grad((probs ** 2).sum(), lg)
    ref = logits.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad((torch.softmax(ref, -1) ** 2).sum(), ref)
    torch.testing.assert_close(g, g_ref)


def opcheck_cases():
    experts, logits, mask = make_inputs(5, 4, 3, 6, dtype=torch.float64, mask=True)
    yield (experts.requires_grad_(), logits.requires_grad_(), None, False)
    yield (experts, logits, mask, True)
    yield (torch.randn(2, 8, 3, dtype=torch.float64).transpose(1, 2).requires_grad_(),
           torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True), None, True)


@pytest.mark.parametrize("op_name", [pytest.param("gate_mix", marks=needs_native),
                                     pytest.param("gate_mix_triton", marks=needs_triton)])
def test_opcheck(op_name):
    if op_name == "gate_mix_triton":
        from mtlkernels.triton import gate_mix as _  # noqa: F401  registers the op
    op = getattr(torch.ops.mtlk, op_name).default
    backward = getattr(torch.ops.mtlk, op_name + "_backward").default
    for args in opcheck_cases():
        torch.library.opcheck(op, args)
        e, lg, mask, _ = args
        g = torch.randn(e.shape[0], lg.shape[1], e.shape[2], dtype=e.dtype)
        torch.library.opcheck(backward, (g, None, e.detach(), lg.detach(), mask))
        torch.library.opcheck(backward, (g, torch.randn_like(lg), e.detach(), lg.detach(), mask))


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_forward_backward(backend, dynamic):
    torch._dynamo.reset()
    mask = ple_mask(2, 2, 1)

    def step(e, lg):
        out, probs = gate_mix(e, lg, expert_mask=mask, return_probs=True, backend=backend)
        return out.square().sum() + probs[..., 0].sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for B in (3, 5):
        experts, logits, _ = make_inputs(B, 5, 2, 8)
        e1, l1 = experts.clone().requires_grad_(), logits.clone().requires_grad_()
        e2, l2 = experts.clone().requires_grad_(), logits.clone().requires_grad_()
        torch.testing.assert_close(compiled(e1, l1), step(e2, l2))
        g1 = torch.autograd.grad(compiled(e1, l1), (e1, l1))
        g2 = torch.autograd.grad(step(e2, l2), (e2, l2))
        torch.testing.assert_close(g1, g2)


@needs_native
@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()
    experts, logits, _ = make_inputs(4, 3, 2, 16)

    def f(e, lg):
        return torch.relu(gate_mix(e, lg, backend="native")) * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(experts, logits), f(experts, logits))


@needs_native
def test_export_keeps_one_node():
    class Mixer(torch.nn.Module):
        def forward(self, e, lg):
            return gate_mix(e, lg, backend="native")

    experts, logits, _ = make_inputs(4, 3, 2, 16)
    ep = torch.export.export(Mixer(), (experts, logits))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.mtlk.gate_mix.default in targets
    torch.testing.assert_close(ep.module()(experts, logits), gate_mix(experts, logits))


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native),
                                     pytest.param("triton", marks=needs_triton)])
def test_vmap_and_batched_grads(backend):
    """The per-task Jacobian as one batched backward (is_grads_batched) uses the vmap rules."""
    experts, logits, mask = make_inputs(5, 4, 3, 6, dtype=torch.float64, mask=True)
    # vmap over a leading dim of experts only, and of both
    stack_e = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    f = torch.func.vmap(lambda e: gate_mix(e, logits, expert_mask=mask, backend=backend))
    torch.testing.assert_close(f(stack_e), torch.stack([reference_gate_mix(e, logits, mask)[0] for e in stack_e]))
    stack_l = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    g = torch.func.vmap(lambda e, lg: gate_mix(e, lg, expert_mask=mask, backend=backend), in_dims=(0, 0))
    torch.testing.assert_close(g(stack_e, stack_l),
                               torch.stack([reference_gate_mix(e, lg, mask)[0] for e, lg in zip(stack_e, stack_l)]))
    # per-task losses -> one batched backward
    e = experts.clone().requires_grad_()
    lg = logits.clone().requires_grad_()
    losses = gate_mix(e, lg, expert_mask=mask, backend=backend).square().sum(dim=(0, 2))  # [T]
    jac = torch.autograd.grad(losses, (e, lg), torch.eye(3, dtype=torch.float64), is_grads_batched=True)
    e2 = experts.clone().requires_grad_()
    l2 = logits.clone().requires_grad_()
    ref_losses = reference_gate_mix(e2, l2, mask)[0].square().sum(dim=(0, 2))
    ref_jac = [torch.stack(rows) for rows in zip(*[torch.autograd.grad(ref_losses[t], (e2, l2), retain_graph=True)
                                                   for t in range(3)])]
    torch.testing.assert_close(jac[0], ref_jac[0])
    torch.testing.assert_close(jac[1], ref_jac[1])


@needs_native
def test_functorch_grad_is_refused_clearly():
    """Documented limit: the C++ autograd kernel does not support torch.func transforms of the
    backward (torch.autograd, compile and is_grads_batched are the supported routes)."""
    experts, logits = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="functorch"):
        torch.func.grad(lambda e: gate_mix(e, logits, backend="native").sum())(experts)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("with_probs", [False, True], ids=["out-grad", "probs-grad"])
@pytest.mark.parametrize("zeros", ["dense", "own-gate-only", "some-rows-zero"])
def test_backward_of_n_task_gradients_equals_one_call_per_task(dtype, masked, with_probs, zeros):
    """Dense task gradients, and the per-task backward's block structure (task k's gradient on
    gate k's mixture only, or zero rows anywhere: skipped in the kernel), bit for bit."""
    experts, logits, mask = make_inputs(6, 5, 3, 7, dtype=dtype, mask=masked)
    N = 4
    g = torch.randn(N, 6, 3, 7, dtype=dtype)
    if zeros == "own-gate-only":  # task 3 reaches no gate: every row zero
        g *= (torch.arange(N)[:, None] == torch.arange(3)[None, :])[:, None, :, None]
    elif zeros == "some-rows-zero":
        g *= (torch.rand(N, 6, 3, 1, generator=torch.Generator().manual_seed(0)) < 0.5)
    gp = torch.randn(N, 6, 3, 5, dtype=dtype) if with_probs else None
    ge, gl = torch.ops.mtlk.gate_mix_backward(g, gp, experts, logits, mask)
    assert ge.shape == (N, 6, 5, 7) and gl.shape == (N, 6, 3, 5)
    for k in range(N):
        e1, l1 = torch.ops.mtlk.gate_mix_backward(g[k], None if gp is None else gp[k], experts, logits, mask)
        torch.testing.assert_close(ge[k], e1, rtol=0, atol=0)
        torch.testing.assert_close(gl[k], l1, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.mtlk.gate_mix_backward.default, (g, gp, experts, logits, mask))
    with pytest.raises(ValueError, match=r"grad_probs must have the shape of logits \(with grad_out's leading N\)"):
        torch.ops.mtlk.gate_mix_backward(g, torch.randn(2, 6, 3, 5, dtype=dtype), experts, logits, mask)
    with pytest.raises(ValueError, match=r"grad_out must be \[B, T, D\] or \[N, B, T, D\]"):
        torch.ops.mtlk.gate_mix_backward(g[None], None, experts, logits, mask)


@needs_native
def test_vmap_of_the_backward_over_task_gradients_reads_the_experts_once():
    """torch.func.vmap over grad_out only: the rule passes the [N, B, T, D] gradients in one
    call (no copies of experts and logits); equal to per-task calls."""
    experts, logits, mask = make_inputs(5, 4, 3, 6, dtype=torch.float64, mask=True)
    g = torch.randn(3, 5, 3, 6, dtype=torch.float64)
    f = torch.func.vmap(lambda gi: torch.ops.mtlk.gate_mix_backward(gi, None, experts, logits, mask))
    ge, gl = f(g)
    for k in range(3):
        e1, l1 = torch.ops.mtlk.gate_mix_backward(g[k], None, experts, logits, mask)
        torch.testing.assert_close(ge[k], e1)
        torch.testing.assert_close(gl[k], l1)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_backward_reads_strided_gradients_in_place(dtype):
    """A permuted grad_out (what the per-task backward hands over) gives what its contiguous
    copy gives, with and without the task dimension."""
    experts, logits, mask = make_inputs(6, 5, 3, 7, dtype=dtype, mask=True)
    g4 = torch.randn(3, 4, 6, 7, dtype=dtype).permute(1, 2, 0, 3)  # [N, B, T, D], T outermost in memory
    g3 = torch.randn(3, 6, 7, dtype=dtype).transpose(0, 1)          # [B, T, D], T outermost
    for g in (g4, g3):
        assert not g.is_contiguous() and g.stride(-1) == 1
        got = torch.ops.mtlk.gate_mix_backward(g, None, experts, logits, mask)
        want = torch.ops.mtlk.gate_mix_backward(g.contiguous(), None, experts, logits, mask)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
