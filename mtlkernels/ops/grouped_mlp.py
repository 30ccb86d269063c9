"""G parallel MLPs in batch-major layout (DESIGN.md op family 1, the expert side of a
mixture): the experts of an MoE level, the towers of the tasks.

``grouped_mlp(x, weights, biases, relu, shared_input=..., gates=None) -> [B, G, out]``

- ``x``: ``[B, in]`` read by every group (``shared_input=True``; ``weights[0]`` is then
  ``[in, G, out0]`` and the first layer is ONE ``[B, in] @ [in, G*out0]`` product), or
  ``[B, G, in]`` (``weights[0]`` ``[G, in, out0]``); any strides.
- ``weights[l]`` for ``l >= 1``: ``[G, in_l, out_l]``; ``biases[l]``: ``[G, out_l]`` or None;
  ``relu[l]``: ReLU after layer l.
- ``gates``: None, or per layer None or ``[B, G, out_l]`` gate logits ``u`` (PPNet's Gate NU
  before its sigmoid; ALGORITHMS.md 1.10): layer l's output is multiplied by ``2 sigmoid(u)``
  inside the same epilogue, and the backward returns ``u``'s gradient from the same pass.

The output is ``[B, G, width]``, the layout ``gate_mix`` reads and writes, so nothing is
transposed or copied between the experts, the gates and the towers. The native kernel
(``csrc/grouped_mlp.cpp``) runs the first layer of shared-input groups as one product and
every other layer as one bmm over group-major ``[G, B, w]`` intermediates (what the op's
``torch.ops.mtlk.grouped_mlp`` form returns for all but the last layer), fuses bias and ReLU
into one pass, and in the backward the ReLU mask with the bias-gradient column sums; its
autograd is C++ (``csrc/grouped_mlp_autograd.cpp``). Backends: ``native`` (CPU, CUDA),
``reference`` (einsum + autograd).

Under ``torch.autocast`` the input, weights and biases run in the autocast dtype, like
``nn.Linear``. NaN/Inf propagate as they do through ``nn.Linear`` and ReLU.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtlkernels import _backend, _extension
from mtlkernels.ops._autocast import autocast_inputs
from mtlkernels.reference.grouped_mlp import grouped_mlp as reference_grouped_mlp


def _check_gates(x: Tensor, gates: Sequence[Tensor | None], G: int, widths: Sequence[int]) -> None:
    if len(gates) != len(widths):
        raise ValueError(f"grouped_mlp: gates has {len(gates)} entries for {len(widths)} layers")
    for l, (u, width) in enumerate(zip(gates, widths)):
        if u is None:
            continue
        if u.shape != (x.shape[0], G, width):
            raise ValueError(f"grouped_mlp: gates[{l}] must be [B, G, out] = [{x.shape[0]}, {G}, {width}], "
                             f"got {tuple(u.shape)}")
        if u.dtype != x.dtype or u.device != x.device:
            raise ValueError(f"grouped_mlp: gates[{l}] is {u.dtype} on {u.device}, x is {x.dtype} on {x.device}")


def _check_args(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], shared_input: bool,
                gates: Sequence[Tensor | None] | None) -> None:
    """The native kernel's argument checks, for the reference backend (same messages)."""
    if not x.is_floating_point():
        raise TypeError(f"grouped_mlp: x must be floating point, got {x.dtype}")
    w0 = weights[0]
    if w0.dim() != 3:
        raise ValueError(f"grouped_mlp: weights[0] must be 3-D, got {tuple(w0.shape)}")
    if shared_input:
        G, width = w0.shape[1], w0.shape[0]
        if x.dim() != 2 or x.shape[1] != width:
            raise ValueError(f"grouped_mlp: x must be [B, in] = [B, {width}] (shared input, weights[0] "
                             f"[in, G, out]), got {tuple(x.shape)}")
    else:
        G, width = w0.shape[0], w0.shape[1]
        if x.dim() != 3 or x.shape[1:] != (G, width):
            raise ValueError(f"grouped_mlp: x must be [B, G, in] = [B, {G}, {width}] (weights[0] [G, in, out]), "
                             f"got {tuple(x.shape)}")
    for l, (w, b) in enumerate(zip(weights, biases)):
        if w.dtype != x.dtype or w.device != x.device:
            raise ValueError(f"grouped_mlp: weights[{l}] is {w.dtype} on {w.device}, x is {x.dtype} on {x.device}")
        if l > 0 and (w.dim() != 3 or w.shape[:2] != (G, width)):
            raise ValueError(f"grouped_mlp: weights[{l}] must be [G, in, out] = [{G}, {width}, out], "
                             f"got {tuple(w.shape)}")
        width = w.shape[-1]
        if b.shape != (G, width):
            raise ValueError(f"grouped_mlp: biases[{l}] must be [G, out] = [{G}, {width}], got {tuple(b.shape)}")
        if b.dtype != x.dtype or b.device != x.device:
            raise ValueError(f"grouped_mlp: biases[{l}] is {b.dtype} on {b.device}, x is {x.dtype} on {x.device}")
    if gates is not None:
        _check_gates(x, gates, G, [w.shape[-1] for w in weights])


if _extension.native_available():
    @torch.library.register_fake("mtlk::grouped_mlp")
    def _fake_forward(x, weights, biases, relu, shared_input, gates=None):
        B, L = x.shape[0], len(weights)
        G = weights[0].shape[1] if shared_input else weights[0].shape[0]
        return [x.new_empty((G, B, w.shape[2]) if l < L - 1 else (B, G, w.shape[2])) for l, w in enumerate(weights)]

    @torch.library.register_fake("mtlk::grouped_mlp_backward")
    def _fake_backward(grads, x, weights, biases, activations, relu, shared_input, input_grad, weight_grad=True,
                       gates=None):
        given = [g for g in grads if g is not None]
        lead = tuple(given[0].shape[:1]) if given and given[0].dim() == 4 else ()  # (N,): N task gradients
        grad_x = x.new_empty(*lead, *(x.shape if input_grad else (0, *x.shape[1:])))
        grad_w = [w.new_empty(*lead, *w.shape) if weight_grad else w.new_empty(0) for w in weights]
        gates = [None] * len(weights) if gates is None else gates
        grad_u = [x.new_empty(0) if u is None else u.new_empty(*lead, *u.shape) for u in gates]
        return grad_x, grad_w, [b.new_empty(*lead, *b.shape) for b in biases], grad_u

    def _forward_vmap(info, in_dims, x, weights, biases, relu, shared_input, gates=None):
        """vmap rule of the forward: over x (and gates) alone, the vmapped rows join the batch
        (one op call); over weights or biases, the reference's einsums with the vmap dim leading.
        No loop over it."""
        x_dim, w_dims, b_dims = in_dims[:3]
        w_dims = w_dims if isinstance(w_dims, (list, tuple)) else [w_dims] * len(weights)
        b_dims = b_dims if isinstance(b_dims, (list, tuple)) else [b_dims] * len(biases)
        u_dims = in_dims[5] if len(in_dims) > 5 else None
        gates = [None] * len(weights) if gates is None else list(gates)
        u_dims = u_dims if isinstance(u_dims, (list, tuple)) else [u_dims] * len(gates)
        n = info.batch_size

        def first(t, d):
            return t.movedim(d, 0) if d is not None else t.expand(n, *t.shape)
        gates = [None if u is None else first(u, d) for u, d in zip(gates, u_dims)]  # [n, B, G, w]
        if all(d is None for d in (*w_dims, *b_dims)):
            x = first(x, x_dim)
            B = x.shape[1]
            acts = torch.ops.mtlk.grouped_mlp(x.flatten(0, 1), weights, biases, relu, shared_input,
                                              [None if u is None else u.flatten(0, 1) for u in gates])
            out = [a.unflatten(1, (n, B)).movedim(1, 0) for a in acts[:-1]] + [acts[-1].unflatten(0, (n, B))]
        else:
            out = reference_grouped_mlp(first(x, x_dim), [first(w, d) for w, d in zip(weights, w_dims)],
                                        [first(b, d) for b, d in zip(biases, b_dims)], relu, shared_input, gates)
        return list(out), [0] * len(out)

    torch.library.register_vmap("mtlk::grouped_mlp", _forward_vmap)

    def _backward_vmap(info, in_dims, grads, x, weights, biases, activations, relu, shared_input, input_grad,
                       weight_grad=True, gates=None):
        """vmap rule of the backward over the gradients alone (torch.vmap of a VJP, as TorchJD's
        autojac runs it): the op takes the N vmapped gradients at once ([N, ...] leading dim)."""
        g_dims = in_dims[0] if isinstance(in_dims[0], (list, tuple)) else [in_dims[0]] * len(grads)
        others = [d for d in (*in_dims[1:5], *in_dims[9:]) for d in (d if isinstance(d, (list, tuple)) else [d])]
        if any(d is not None for d in others):
            raise NotImplementedError("mtlk::grouped_mlp_backward: vmap over the inputs, weights or activations of "
                                      "the backward is not supported (only over its gradients)")
        n = info.batch_size
        batched = [None if g is None else (g.movedim(d, 0) if d is not None else g.expand(n, *g.shape)).contiguous()
                   for g, d in zip(grads, g_dims)]
        gx, gw, gb, gu = torch.ops.mtlk.grouped_mlp_backward(batched, x, weights, biases, activations, relu,
                                                             shared_input, input_grad, weight_grad, gates)
        gated = [False] * len(gw) if gates is None else [u is not None for u in gates]
        return (gx, gw, gb, gu), (0, [0 if weight_grad else None] * len(gw), [0] * len(gb),
                                  [0 if g else None for g in gated])

    torch.library.register_vmap("mtlk::grouped_mlp_backward", _backward_vmap)


def _zero_bias(x: Tensor, w: Tensor, l: int, shared_input: bool) -> Tensor:
    """The op always takes a bias; a layer without one gets constant zeros (no gradient kept)."""
    if not isinstance(w, Tensor) or w.dim() != 3:
        raise ValueError(f"grouped_mlp: weights[{l}] must be 3-D, got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    return x.new_zeros(w.shape[1] if l == 0 and shared_input else w.shape[0], w.shape[2])


def grouped_mlp(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None], relu: Sequence[bool], *,
                shared_input: bool, gates: Sequence[Tensor | None] | None = None, backend: str | None = None) -> Tensor:
    """The output ``[B, G, out_last]`` of G parallel MLPs (layouts and ``gates`` in the module
    docstring).

    ``backend``: ``"native"``, ``"reference"`` or None (``MTLK_BACKEND``, else auto: the compiled
    kernel when there is one for the device). There is no Triton version: the work is G matrix
    products, which the vendor GEMMs already run at their rate.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"grouped_mlp: x must be a Tensor, got {type(x).__name__}")
    if len(weights) == 0 or len(biases) != len(weights) or len(relu) != len(weights):
        raise ValueError(f"grouped_mlp: weights ({len(weights)}), biases ({len(biases)}) and relu ({len(relu)}) "
                         "need one entry per layer, at least one layer")
    L = len(weights)
    if gates is not None and len(gates) != L:
        raise ValueError(f"grouped_mlp: gates has {len(gates)} entries for {L} layers")
    if gates is not None and all(u is None for u in gates):
        gates = None
    cast = autocast_inputs([x, *weights, *biases, *(gates or ())])
    x, weights, biases = cast[0], cast[1:1 + L], cast[1 + L:1 + 2 * L]
    gates = cast[1 + 2 * L:] or None
    relu = [bool(r) for r in relu]
    biases = [b if b is not None else _zero_bias(x, w, l, shared_input) for l, (w, b) in enumerate(zip(weights, biases))]
    which = _backend.resolve("grouped_mlp", backend, x.device, has_triton=False)
    if which == "native":  # the kernel checks its arguments with the same messages
        return torch.ops.mtlk.grouped_mlp(x, list(weights), list(biases), relu, shared_input, gates)[-1]
    _check_args(x, weights, biases, shared_input, gates)
    return reference_grouped_mlp(x, weights, biases, relu, shared_input, gates)[-1]
