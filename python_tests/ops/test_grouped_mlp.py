"""grouped_mlp: parity with the einsum reference (every activation and every gradient) over
layouts, depths, dtypes, strides and sizes; gradcheck, opcheck, compile, vmap, the batched
per-task backward, autocast, edge cases and errors."""
from __future__ import annotations

import pytest
import torch

import mtlkernels
from mtlkernels import _extension
from mtlkernels.ops import grouped_mlp
from mtlkernels.reference.grouped_mlp import grouped_mlp as reference

pytestmark = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))

# (B, G, widths): small, and large enough for the epilogues to run in parallel row blocks.
SMALL = (7, 3, [5, 4, 6, 2])
LARGE = (260, 2, [130, 129, 125, 3])
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def make(B, G, widths, layers, shared, dtype=torch.float32, bias=True):
    x = torch.randn(B, widths[0]) if shared else torch.randn(B, G, widths[0])
    weights = [torch.randn(widths[0], G, widths[1]) if shared else torch.randn(G, widths[0], widths[1])]
    weights += [torch.randn(G, widths[l], widths[l + 1]) for l in range(1, layers)]
    scale = [w.shape[-2] ** -0.5 if not (l == 0 and shared) else w.shape[0] ** -0.5 for l, w in enumerate(weights)]
    weights = [(w * s).to(dtype) for w, s in zip(weights, scale)]
    biases = [torch.randn(G, widths[l + 1]).to(dtype) if bias else None for l in range(layers)]
    return x.to(dtype), weights, biases


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]


def backward_both(acts, expected):
    """One random gradient on every activation (the intermediate ones included), through the
    native activations and the reference's; returns the gradients."""
    grads = [torch.randn_like(e) for e in expected]
    torch.autograd.backward(acts, grads)
    torch.autograd.backward(expected, grads)
    return grads


def assert_matches(acts, expected, nat, ref, tol):
    """Every activation and every leaf gradient of the native run equals the reference's."""
    for a, e in zip(acts, expected):
        torch.testing.assert_close(a, e.detach(), **tol)
    for n, r in zip(nat, ref):
        torch.testing.assert_close(n.grad, r.grad, **tol)


def run_both(x, weights, biases, relu, shared):
    """(native activations, reference activations) for the same leaves, plus the leaf lists."""
    nat = leaves(x, *weights, *[b for b in biases])
    ref = leaves(x, *weights, *[b for b in biases])
    L = len(weights)
    split = lambda t: (t[0], t[1:1 + L], t[1 + L:])  # noqa: E731
    xn, wn, bn = split(nat)
    xr, wr, br = split(ref)
    zero = [b if b is not None else torch.zeros(w.shape[1] if l == 0 and shared else w.shape[0], w.shape[2],
                                                dtype=x.dtype) for l, (w, b) in enumerate(zip(wn, bn))]
    acts = torch.ops.mtlk.grouped_mlp(xn, list(wn), zero, relu, shared)
    expected = reference(xr, list(wr), list(br), relu, shared)
    return acts, expected, nat, ref


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_activations_and_gradients_match_reference(size, shared, layers, dtype):
    B, G, widths = SMALL if size == "small" else LARGE
    x, weights, biases = make(B, G, widths, layers, shared, dtype)
    relu = [True] * (layers - 1) + [layers % 2 == 1]  # last layer with and without ReLU
    acts, expected, nat, ref = run_both(x, weights, biases, relu, shared)
    assert [a.shape for a in acts] == [e.shape for e in expected]
    grads = backward_both(acts, expected)
    if dtype != torch.bfloat16:
        assert_matches(acts, expected, nat, ref, TOL[dtype])
        return
    # bfloat16: no worse than PyTorch's own bfloat16 ops, both measured against float64 math on
    # the same (bfloat16-valued) inputs and output gradients
    exact, _, leaves64, _ = run_both(x.double(), [w.double() for w in weights], [b.double() for b in biases],
                                     relu, shared)
    torch.autograd.backward(exact, [g.double() for g in grads])

    def check(native, stock, truth):
        err, err_stock = (native.double() - truth).abs().max(), (stock.double() - truth).abs().max()
        assert err <= 2 * err_stock + 1e-2 * truth.abs().max(), (err.item(), err_stock.item())

    for a, e, t in zip(acts, expected, exact):
        check(a.detach(), e.detach(), t.detach())
    for n, r, t in zip(nat, ref, leaves64):
        check(n.grad, r.grad, t.grad)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_gradcheck(shared):
    x, weights, biases = make(4, 3, [5, 4, 3], 2, shared, torch.float64)
    args = leaves(x, *weights, *biases)

    def f(x, w0, w1, b0, b1):
        return grouped_mlp(x, [w0, w1], [b0, b1], [True, False], shared_input=shared)

    assert torch.autograd.gradcheck(f, args)


def test_only_used_outputs_need_gradients():
    """The wrapper returns the last activation; unused intermediate outputs get no zero-filled
    gradient and the result equals the reference."""
    x, weights, biases = make(*SMALL, 3, True, torch.float64)
    xs, *rest = leaves(x, *weights, *biases)
    w, b = rest[:3], rest[3:]
    grouped_mlp(xs, w, b, [True, True, False], shared_input=True).square().sum().backward()
    xr, *rr = leaves(x, *weights, *biases)
    reference(xr, rr[:3], rr[3:], [True, True, False], True)[-1].square().sum().backward()
    for n, r in zip([xs, *rest], [xr, *rr]):
        torch.testing.assert_close(n.grad, r.grad)


def test_strided_inputs_and_weights():
    B, G, widths = SMALL
    base = torch.randn(B, 2 * G, widths[0] + 3, dtype=torch.float64)
    x = base[:, ::2, 1:widths[0] + 1]  # non-contiguous [B, G, in]
    w0 = torch.randn(G, widths[1], widths[0], dtype=torch.float64).transpose(1, 2)  # [G, in, out], transposed
    w1 = torch.randn(G, widths[1], widths[2], dtype=torch.float64)
    out = grouped_mlp(x, [w0, w1], [None, None], [True, False], shared_input=False)
    torch.testing.assert_close(out, reference(x, [w0, w1], [None, None], [True, False], False)[-1])


def cpu_vendor() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":")[1].strip() for line in f if line.startswith("vendor_id")), "unknown")


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_cpu_product_libraries_agree(shared):
    """float32 CPU products run on oneDNN on non-Intel CPUs (faster than MKL there, see
    csrc/cpu/matmul.cpp) and on MKL on Intel or with torch.backends.mkldnn disabled; both match
    the reference, with strided inputs and weights and gradients on every input. The sizes put
    the first two layers' products above the oneDNN threshold (2^23 multiply-adds) and the last
    one below it."""
    B, G, widths = 300, 2, LARGE[2]
    x, weights, biases = make(B, G, widths, 3, shared)
    if not shared:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)  # [B, G, in] stored group-major
    weights[1] = weights[1].transpose(1, 2).contiguous().transpose(1, 2)
    relu = [True, True, False]
    onednn = (mtlkernels.build_info()["cpu_isa"] == "avx512" and torch.backends.mkldnn.is_available()
              and cpu_vendor() != "GenuineIntel")
    assert mtlkernels.build_info()["cpu_float_products"] == ("onednn" if onednn else "mkl")
    for enabled in (True, False):
        with torch.backends.mkldnn.flags(enabled=enabled):
            if not enabled:
                assert mtlkernels.build_info()["cpu_float_products"] == "mkl"
            acts, expected, nat, ref = run_both(x, weights, biases, relu, shared)
            backward_both(acts, expected)
        assert_matches(acts, expected, nat, ref, TOL[torch.float32])


@pytest.mark.parametrize("B", [1, 7, 8, 9, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_small_stacks_match_reference(B, dtype):
    """Tower-sized per-group stacks (32 -> 16 -> 1, and a 3-layer one) run the CPU small-stack
    path (csrc/cpu/grouped_mlp_small.cpp: tiles of 8 rows of one group, then single rows):
    every activation and gradient matches the reference, including gradients on intermediate
    activations and strided inputs, at batch sizes around the tile size."""
    for widths, relu in (([32, 16, 1], [True, False]), ([12, 20, 8, 3], [True, False, True])):
        x, weights, biases = make(B, 6, widths, len(widths) - 1, False, dtype)
        x = x.transpose(0, 1).contiguous().transpose(0, 1)  # [B, G, in] stored group-major
        acts, expected, nat, ref = run_both(x, weights, biases, relu, False)
        backward_both(acts, expected)
        assert_matches(acts, expected, nat, ref, TOL[dtype])


def test_small_stack_nan_propagates_like_linear_and_relu():
    x, weights, biases = make(20, 6, [32, 16, 1], 2, False)
    x[11, 2, 5] = float("nan")
    out = grouped_mlp(x, weights, biases, [True, False], shared_input=False)
    expected = reference(x, weights, biases, [True, False], False)[-1]
    assert torch.isnan(out[11, 2]).all() and torch.isnan(out).sum() == 1
    torch.testing.assert_close(out, expected, equal_nan=True)


def test_layer_without_bias_gets_no_gradient_entry():
    x, weights, _ = make(*SMALL, 2, True, torch.float64)
    w = leaves(*weights)
    b1 = torch.randn(SMALL[1], SMALL[2][2], dtype=torch.float64, requires_grad=True)
    grouped_mlp(x, w, [None, b1], [True, True], shared_input=True).sum().backward()
    wr = leaves(*weights)
    b1r = b1.detach().clone().requires_grad_()
    reference(x, wr, [None, b1r], [True, True], True)[-1].sum().backward()
    torch.testing.assert_close(b1.grad, b1r.grad)
    for a, r in zip(w, wr):
        torch.testing.assert_close(a.grad, r.grad)


def test_empty_batch():
    x, weights, biases = make(0, 3, [5, 4, 6], 2, True)
    w, b = leaves(*weights), leaves(*biases)
    out = grouped_mlp(x, w, b, [True, True], shared_input=True)
    assert out.shape == (0, 3, 6)
    out.sum().backward()
    assert all(torch.count_nonzero(t.grad) == 0 for t in w + b)


def test_nan_propagates_like_linear_and_relu():
    x, weights, biases = make(*SMALL, 2, True)
    x[2, 0] = float("nan")
    out = grouped_mlp(x, weights, biases, [True, False], shared_input=True)
    expected = reference(x, weights, biases, [True, False], True)[-1]
    assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3]]).any()
    torch.testing.assert_close(out, expected, equal_nan=True)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_opcheck(shared):
    x, weights, biases = make(*SMALL, 2, shared)
    args = leaves(x, *weights, *biases)
    torch.library.opcheck(torch.ops.mtlk.grouped_mlp.default, (args[0], args[1:3], args[3:], [True, False], shared))
    acts = torch.ops.mtlk.grouped_mlp(x, weights, biases, [True, False], shared)
    grads = [None, torch.randn_like(acts[1])]
    torch.library.opcheck(torch.ops.mtlk.grouped_mlp_backward.default,
                          (grads, x, weights, biases, acts, [True, False], shared, True))


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    x, weights, biases = make(*SMALL, 2, True)
    w, b = leaves(*weights), leaves(*biases)

    def f(x):
        return grouped_mlp(x, w, b, [True, False], shared_input=True).square().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    loss = compiled(x)
    grads = torch.autograd.grad(loss, w + b)
    expected = torch.autograd.grad(f(x), w + b)
    torch.testing.assert_close(loss, f(x))
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e)


def test_vmap_over_inputs():
    x, weights, biases = make(*SMALL, 2, False, torch.float64)
    xs = torch.stack([x, x * 2, -x])
    out = torch.func.vmap(lambda x: grouped_mlp(x, weights, biases, [True, False], shared_input=False))(xs)
    for i in range(3):
        torch.testing.assert_close(out[i], grouped_mlp(xs[i], weights, biases, [True, False], shared_input=False))


@pytest.mark.parametrize("size", ["small", "large"])
def test_batched_per_task_backward(size):
    """is_grads_batched (mtlkernels.balance's per-task gradients) equals one backward per task."""
    B, G, widths = SMALL if size == "small" else LARGE
    x, weights, biases = make(B, G, widths, 3, True, torch.float64)
    w, b = leaves(*weights), leaves(*biases)
    out = grouped_mlp(x, w, b, [True, True, False], shared_input=True)
    T = 3
    cotangents = torch.randn(T, *out.shape, dtype=torch.float64)
    batched = torch.autograd.grad(out, w + b, cotangents, is_grads_batched=True, retain_graph=True)
    for t in range(T):
        single = torch.autograd.grad(out, w + b, cotangents[t], retain_graph=True)
        for a, s in zip(batched, single):
            torch.testing.assert_close(a[t], s)


def test_autocast_runs_in_bfloat16():
    x, weights, biases = make(*SMALL, 2, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = grouped_mlp(x, weights, biases, [True, False], shared_input=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), grouped_mlp(x, weights, biases, [True, False], shared_input=True),
                               rtol=3e-2, atol=3e-2)


def test_backends_agree():
    x, weights, biases = make(*SMALL, 2, True, torch.float64)
    native = grouped_mlp(x, weights, biases, [True, False], shared_input=True, backend="native")
    ref = grouped_mlp(x, weights, biases, [True, False], shared_input=True, backend="reference")
    torch.testing.assert_close(native, ref)
    with pytest.raises(ValueError, match="triton"):
        grouped_mlp(x, weights, biases, [True, False], shared_input=True, backend="triton")


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("case, error, match", [
    ("x_rank", ValueError, r"x must be \[B, in\]"),
    ("x_width", ValueError, r"x must be \[B, G, in\]"),
    ("chain", ValueError, r"weights\[1\] must be \[G, in, out\]"),
    ("dtype", (TypeError, ValueError), r"weights\[1\]"),
    ("bias_shape", ValueError, r"biases\[0\] must be \[G, out\]"),
    ("lengths", ValueError, r"one entry per layer"),
    ("weight_rank", ValueError, r"weights\[0\] must be 3-D"),
    ("int_input", TypeError, r"x must be floating point"),
])
def test_errors_name_the_argument(backend, case, error, match):
    B, G, widths = SMALL
    shared = case != "x_width"
    x, weights, biases = make(B, G, widths, 2, shared)
    relu = [True, False]
    if case == "x_rank":
        x = x[None]
    elif case == "x_width":
        x = x[:, :, :-1]
    elif case == "chain":
        weights[1] = weights[1][:, 1:]
    elif case == "dtype":
        weights[1] = weights[1].double()
    elif case == "bias_shape":
        biases[0] = biases[0][:, 1:]
    elif case == "lengths":
        relu = [True]
    elif case == "weight_rank":
        weights[0] = weights[0][:, 0]
        biases[0] = None
    elif case == "int_input":
        x = x.long()
    with pytest.raises(error, match=match):
        grouped_mlp(x, weights, biases, relu, shared_input=shared, backend=backend)


def test_functorch_grad_is_refused_clearly():
    """Documented limit: the C++ autograd kernel does not support torch.func transforms of the
    backward (torch.autograd, compile and is_grads_batched are the supported routes)."""
    x, weights, biases = make(*SMALL, 1, True, torch.float64)
    with pytest.raises(RuntimeError, match="functorch"):
        torch.func.grad(lambda w: grouped_mlp(x, [w], biases, [True], shared_input=True).sum())(weights[0])


TASK_CASES = [(SMALL, 2, True), (SMALL, 3, False), (LARGE, 3, True), ((9, 4, [6, 5, 3]), 2, False),
              ((0, 3, [5, 4, 2]), 2, True), ((5, 2, [300, 4]), 1, False), ((5, 2, [7, 3]), 1, True)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("input_grad", [True, False], ids=["input-grad", "no-input-grad"])
@pytest.mark.parametrize("intermediate", [False, True], ids=["output-grad", "every-grad"])
@pytest.mark.parametrize("case", range(len(TASK_CASES)))
def test_backward_of_n_task_gradients_equals_one_call_per_task(case, intermediate, input_grad, dtype):
    """The backward op with [N, ...] gradients (the per-task backward's one call) against N
    calls with [...] gradients, the small-group path included (one call per task takes it)."""
    (B, G, widths), L, shared = TASK_CASES[case]
    x, weights, biases = make(B, G, widths, L, shared, dtype)
    relu = [l % 2 == 0 for l in range(L)]
    acts = torch.ops.mtlk.grouped_mlp(x, weights, biases, relu, shared)
    N = 3
    grads = [torch.randn(N, *a.shape, dtype=dtype) if intermediate or l == L - 1 else None
             for l, a in enumerate(acts)]
    gx, gw, gb, _ = torch.ops.mtlk.grouped_mlp_backward(grads, x, weights, biases, acts, relu, shared, input_grad)
    assert gx.shape == (N, *(x.shape if input_grad else (0, *x.shape[1:])))
    for k in range(N):
        ex, ew, eb, _ = torch.ops.mtlk.grouped_mlp_backward([None if g is None else g[k] for g in grads], x, weights,
                                                         biases, acts, relu, shared, input_grad)
        torch.testing.assert_close(gx[k], ex, **TOL[dtype])
        for a, e in zip(gw + gb, ew + eb):
            torch.testing.assert_close(a[k], e, **TOL[dtype])


# the products' path at every depth, shared and per-group input, and one small-stack case
SPARSE_CASES = [((9, 4, [60, 50, 3]), 2, False), ((9, 4, [6, 5, 3]), 2, True), ((33, 3, [7, 130, 9, 4]), 3, False),
                ((33, 3, [7, 130, 9, 4]), 3, True), ((5, 2, [7, 3]), 1, True), ((5, 2, [300, 4]), 1, False),
                ((9, 4, [6, 5, 3]), 2, False)]


@pytest.mark.parametrize("pattern", ["diagonal", "one-task-dead", "random", "one-live-block"])
@pytest.mark.parametrize("intermediate", [False, True], ids=["output-grad", "every-grad"])
@pytest.mark.parametrize("products", ["all", "input-only", "weights-only"])
@pytest.mark.parametrize("case", range(len(SPARSE_CASES)))
def test_block_sparse_task_gradients_equal_one_call_per_task(case, products, intermediate, pattern):
    """N task gradients of which some (task, group) blocks are exactly zero (the per-task backward
    through task heads: task t reaches tower t only) skip those blocks' products: every result
    still equals one dense call per task, zeros where a block is dead."""
    (B, G, widths), L, shared = SPARSE_CASES[case]
    x, weights, biases = make(B, G, widths, L, shared, torch.float64)
    relu = [l % 2 == 0 for l in range(L)]
    acts = torch.ops.mtlk.grouped_mlp(x, weights, biases, relu, shared)
    N = G
    gen = torch.Generator().manual_seed(case)
    live = {"diagonal": torch.eye(N, G, dtype=torch.bool), "one-task-dead": torch.ones(N, G, dtype=torch.bool),
            "random": torch.rand(N, G, generator=gen) < 0.5, "one-live-block": torch.zeros(N, G, dtype=torch.bool)}[pattern]
    if pattern == "one-task-dead":
        live[1] = False
    if pattern == "one-live-block":
        live[0, G - 1] = True
    grads = []
    for l, a in enumerate(acts):
        if not (intermediate or l == L - 1):
            grads.append(None)
            continue
        g = torch.randn(N, *a.shape, dtype=torch.float64, generator=gen)
        block = live[:, None, :, None] if l == L - 1 else live[:, :, None, None]  # [N, B, G, w] / [N, G, B, w]
        grads.append(g * block)
    input_grad, weight_grad = products != "weights-only", products != "input-only"
    gx, gw, gb, _ = torch.ops.mtlk.grouped_mlp_backward(grads, x, weights, biases, acts, relu, shared, input_grad,
                                                        weight_grad)
    for k in range(N):
        ex, ew, eb, _ = torch.ops.mtlk.grouped_mlp_backward([None if g is None else g[k] for g in grads], x, weights,
                                                            biases, acts, relu, shared, input_grad, weight_grad)
        torch.testing.assert_close(gx[k], ex, **TOL[torch.float64])
        for a, e in zip((gw if weight_grad else []) + gb, (ew if weight_grad else []) + eb):
            torch.testing.assert_close(a[k], e, **TOL[torch.float64])
        for l, w in enumerate(gw if weight_grad else []):  # dead blocks are exact zeros
            dead = w[k][:, ~live[k]] if l == 0 and shared else w[k][~live[k]]  # [in, G, out] / [G, in, out]
            assert torch.count_nonzero(dead) == 0


def test_n_task_gradients_opcheck_and_errors():
    x, weights, biases = make(*SMALL, 2, True, torch.float64)
    acts = torch.ops.mtlk.grouped_mlp(x, weights, biases, [True, False], True)
    grads = [torch.randn(2, *acts[0].shape, dtype=torch.float64), torch.randn(2, *acts[1].shape, dtype=torch.float64)]
    torch.library.opcheck(torch.ops.mtlk.grouped_mlp_backward.default,
                          (grads, x, weights, biases, acts, [True, False], True, True))
    bad = [grads[0], torch.randn(3, *acts[1].shape, dtype=torch.float64)]
    with pytest.raises(ValueError, match=r"grads\[1\] must be \[2, 7, 3, 6\] \(N task gradients\), got \[3, 7, 3, 6\]"):
        torch.ops.mtlk.grouped_mlp_backward(bad, x, weights, biases, acts, [True, False], True, True)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_batched_per_task_backward_every_input(shared, dtype):
    """is_grads_batched through a 3-layer stack into x, weights and biases: equal to one
    backward per task (bfloat16 as autocast runs it)."""
    x, weights, biases = make(9, 4, [6, 5, 4, 3], 3, shared, dtype)
    x, w, b = leaves(x)[0], leaves(*weights), leaves(*biases)
    out = grouped_mlp(x, w, b, [True, True, False], shared_input=shared)
    cot = torch.randn(4, *out.shape, dtype=dtype)
    batched = torch.autograd.grad(out, [x, *w, *b], cot, is_grads_batched=True, retain_graph=True)
    tol = TOL.get(dtype, dict(rtol=2e-2, atol=2e-2))
    for t in range(4):
        single = torch.autograd.grad(out, [x, *w, *b], cot[t], retain_graph=True)
        for a, s in zip(batched, single):
            torch.testing.assert_close(a[t], s, **tol)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_vmap_over_weights_and_over_inputs_of_a_deep_stack(shared):
    """The forward's vmap rule: over x the rows join the batch, over the weights the reference
    runs under vmap; both equal a loop of op calls."""
    x, weights, biases = make(6, 3, [5, 4, 3, 2], 3, shared, torch.float64)
    relu = [True, False, True]
    xs = torch.stack([x, 2 * x, -x, x.flip(0)])
    f = torch.func.vmap(lambda x: torch.ops.mtlk.grouped_mlp(x, weights, biases, relu, shared))
    for k, acts in enumerate(zip(*f(xs))):
        for a, e in zip(acts, torch.ops.mtlk.grouped_mlp(xs[k], weights, biases, relu, shared)):
            torch.testing.assert_close(a, e)
    ws = [torch.stack([w, 0.5 * w]) for w in weights]
    g = torch.func.vmap(lambda w0, w1, w2: torch.ops.mtlk.grouped_mlp(x, [w0, w1, w2], biases, relu, shared))
    out = g(*ws)
    for k in range(2):
        for a, e in zip(out, torch.ops.mtlk.grouped_mlp(x, [w[k] for w in ws], biases, relu, shared)):
            torch.testing.assert_close(a[k], e)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-group"])
def test_torch_vmap_of_the_backward_takes_the_task_gradients_at_once(shared):
    """torch.vmap over autograd.grad (how TorchJD's autojac forms a Jacobian) reaches the
    backward op's functorch rule, which passes the vmapped gradients in one call."""
    x, weights, biases = make(8, 3, [5, 4, 2], 2, shared, torch.float64)
    x, w, b = leaves(x)[0], leaves(*weights), leaves(*biases)
    out = grouped_mlp(x, w, b, [True, False], shared_input=shared)
    cot = torch.randn(4, *out.shape, dtype=torch.float64)
    batched = torch.vmap(lambda g: torch.autograd.grad(out, [x, *w, *b], g, retain_graph=True))(cot)
    for t in range(4):
        single = torch.autograd.grad(out, [x, *w, *b], cot[t], retain_graph=True)
        for a, s in zip(batched, single):
            torch.testing.assert_close(a[t], s)


@pytest.mark.parametrize("case", range(len(TASK_CASES)))
def test_backward_without_weight_gradients_skips_them_and_keeps_the_rest(case):
    """weight_grad=False (what autograd asks when no weight needs a gradient): [0] weight
    gradients, the input and bias gradients unchanged; the fake kernel agrees (opcheck)."""
    (B, G, widths), L, shared = TASK_CASES[case]
    x, weights, biases = make(B, G, widths, L, shared, torch.float64)
    relu = [l % 2 == 0 for l in range(L)]
    acts = torch.ops.mtlk.grouped_mlp(x, weights, biases, relu, shared)
    for lead in ((), (3,)):
        grads = [None] * (L - 1) + [torch.randn(*lead, *acts[-1].shape, dtype=torch.float64)]
        full = torch.ops.mtlk.grouped_mlp_backward(grads, x, weights, biases, acts, relu, shared, True)
        lean = torch.ops.mtlk.grouped_mlp_backward(grads, x, weights, biases, acts, relu, shared, True, False)
        assert all(w.shape == (0,) for w in lean[1])
        torch.testing.assert_close(lean[0], full[0], rtol=0, atol=0)
        for a, b in zip(lean[2], full[2]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.mtlk.grouped_mlp_backward.default,
                          (grads, x, weights, biases, acts, relu, shared, True, False))


def test_autograd_to_the_input_alone_skips_the_weight_products():
    """A gradient asked for x only (as a per-task backward to a representation asks) equals the
    full backward's, with no weight gradient computed."""
    x, weights, biases = make(9, 4, [6, 5, 3], 2, False, torch.float64)
    x, w, b = leaves(x)[0], leaves(*weights), leaves(*biases)
    out = grouped_mlp(x, w, b, [True, False], shared_input=False)
    cot = torch.randn(3, *out.shape, dtype=torch.float64)
    (only_x,) = torch.autograd.grad(out, [x], cot, is_grads_batched=True, retain_graph=True)
    full = torch.autograd.grad(out, [x, *w, *b], cot, is_grads_batched=True)
    torch.testing.assert_close(only_x, full[0])
