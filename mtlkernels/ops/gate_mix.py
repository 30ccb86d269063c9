"""Gate mixture: the expert-gating step of every MMoE / CGC / PLE layer, fused.

``out[b, t, :] = sum_x softmax(logits[b, t, :] | expert_mask[t, :])[x] * experts[b, x, :]``

Backends (see ``mtlkernels._backend``): ``native`` (C++ CPU kernel, CUDA kernel),
``triton``, ``reference`` (softmax + bmm under plain autograd).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels import _backend, _extension
from mtlkernels.ops._autocast import autocast_inputs
from mtlkernels.ops import _gate_mix_rules
from mtlkernels.reference import gate_mix as reference_gate_mix

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_args(experts: Tensor, logits: Tensor, expert_mask: Tensor | None) -> None:
    """Shape, dtype and device checks; no data is read."""
    for name, t in (("experts", experts), ("logits", logits)):
        if not isinstance(t, Tensor):
            raise TypeError(f"gate_mix: {name} must be a Tensor, got {type(t).__name__}")
    if experts.dim() != 3:
        raise ValueError(f"gate_mix: experts must be [B, X, D], got shape {tuple(experts.shape)}")
    if logits.dim() != 3:
        raise ValueError(f"gate_mix: logits must be [B, T, X], got shape {tuple(logits.shape)}")
    if experts.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"gate_mix: experts must be a floating dtype {_FLOAT_DTYPES}, got {experts.dtype}")
    if logits.dtype != experts.dtype:
        raise TypeError(f"gate_mix: logits dtype {logits.dtype} must match experts dtype {experts.dtype}")
    if logits.device != experts.device:
        raise ValueError(f"gate_mix: logits is on {logits.device} but experts is on {experts.device}")
    B, X, _ = experts.shape
    if logits.shape[0] != B:
        raise ValueError(f"gate_mix: logits batch {logits.shape[0]} != experts batch {B} "
                         f"(logits {tuple(logits.shape)}, experts {tuple(experts.shape)})")
    if logits.shape[2] != X:
        raise ValueError(f"gate_mix: logits has {logits.shape[2]} experts in its last dim, experts has {X} "
                         f"(logits {tuple(logits.shape)}, experts {tuple(experts.shape)})")
    if X == 0:
        raise ValueError("gate_mix: experts has X = 0 experts to mix")
    if expert_mask is not None:
        if not isinstance(expert_mask, Tensor) or expert_mask.dtype != torch.bool:
            raise TypeError(f"gate_mix: expert_mask must be a bool Tensor [T, X], got "
                            f"{getattr(expert_mask, 'dtype', type(expert_mask).__name__)}")
        T = logits.shape[1]
        if tuple(expert_mask.shape) != (T, X):
            raise ValueError(f"gate_mix: expert_mask must be [T, X] = [{T}, {X}], got {tuple(expert_mask.shape)}")
        if expert_mask.device != experts.device:
            raise ValueError(f"gate_mix: expert_mask is on {expert_mask.device} but experts is on {experts.device}")


def check_mask_values(expert_mask: Tensor | None) -> None:
    """Every task must see at least one expert."""
    if expert_mask is None:
        return
    empty = ~expert_mask.any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"gate_mix: expert_mask row(s) {rows} mask out every expert; each task must see one")


def check_logit_values(logits: Tensor, expert_mask: Tensor | None) -> None:
    """Logits of the experts a task may see must be finite or -inf, and not all -inf.

    Reads the logits once (B*T*X values); on CUDA this is a host synchronisation. The C++ CPU
    kernel does the same check inside its softmax loop for free.
    """
    allowed = logits if expert_mask is None else logits.masked_fill(~expert_mask, float("-inf"))
    bad = torch.isnan(allowed) | (allowed == float("inf"))
    if bool(bad.any()):
        b, t, _ = bad.nonzero()[0].tolist()
        raise ValueError(f"gate_mix: logits[{b}, {t}] holds NaN or +inf among the experts the task may see")
    if allowed.numel() and bool((allowed.amax(dim=-1) == float("-inf")).any()):
        b, t = (allowed.amax(dim=-1) == float("-inf")).nonzero()[0].tolist()
        raise ValueError(f"gate_mix: logits[{b}, {t}] has no expert to mix: every expert is masked out "
                         "or has logit -inf")


if _extension.native_available():
    _gate_mix_rules.register("mtlk::gate_mix", "mtlk::gate_mix_backward")


def _triton_op():
    from mtlkernels.triton import gate_mix as triton_gate_mix  # imports triton: only when asked for

    return triton_gate_mix.gate_mix_triton


def gate_mix(experts: Tensor, logits: Tensor, *, expert_mask: Tensor | None = None,
             return_probs: bool = False, backend: str | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax over experts fused with the weighted sum of the expert outputs.

    Args:
        experts: ``[B, X, D]`` outputs of the X experts for each of B samples.
        logits: ``[B, T, X]`` gate logits of T tasks (or gates), same dtype and device.
        expert_mask: optional ``[T, X]`` bool; ``expert_mask[t, x] = False`` hides expert x from
            task t (PLE/CGC: a task sees its own experts plus the shared ones). Every row must
            keep at least one expert. Masked experts get probability 0 and zero gradient.
        return_probs: also return the gate probabilities ``[B, T, X]`` (differentiable), e.g.
            for monitoring expert utilisation or a load-balancing loss.
        backend: ``"native"``, ``"triton"``, ``"reference"`` or ``None`` (``MTLK_BACKEND``, else
            auto: compiled kernel for the tensor's device, else Triton on CUDA, else reference).

    Returns:
        ``out [B, T, D]``, or ``(out, probs)`` when ``return_probs``.

    Dtypes: float32, float64, bfloat16, float16; softmax and sums accumulate in float32
    (float64 for float64 inputs). Under ``torch.autocast`` both inputs are cast to the autocast
    dtype (bfloat16 on CPU by default). Bad logit values (NaN, +inf, a row with no visible expert)
    raise ValueError: checked inside the CPU kernel, and by a pass over the logits on the
    other backends (skipped for the reference backend under ``torch.compile``).
    """
    experts, logits = autocast_inputs([experts, logits])
    _check_args(experts, logits, expert_mask)
    which = _backend.resolve("gate_mix", backend, experts.device)
    compiling = torch.compiler.is_compiling()
    if not compiling:
        check_mask_values(expert_mask)
    if which == "reference":
        if not compiling:
            check_logit_values(logits, expert_mask)
        out, probs = reference_gate_mix(experts, logits, expert_mask)
    elif which == "native":
        if experts.device.type != "cpu" and not compiling:
            check_logit_values(logits, expert_mask)
        out, probs = torch.ops.mtlk.gate_mix(experts, logits, expert_mask, return_probs)
    else:
        out, probs = _triton_op()(experts, logits, expert_mask, return_probs)
    return (out, probs) if return_probs else out
