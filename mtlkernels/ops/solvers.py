"""T x T solvers of the gradient methods: PCGrad, GradVac, MGDA min-norm and PE-LTR weights.

Each solver reads only the Gram matrix ``G = J J^T`` of the T task gradients (float64, from
``mtlkernels.ops`` gram) and returns weights ``w`` such that the combined update is
``d = J^T w``. All accept one problem ``gram [T, T]`` or a batch ``gram [N, T, T]`` and return
``[T]`` or ``[N, T]`` accordingly. Conventions (specs/ALGORITHMS.md part 3):

- ``pcgrad_weights`` (Yu et al., NeurIPS 2020): sum convention, ``w = 1`` when nothing
  conflicts; the Gram form of torchjd with LibMTL's loop semantics (an explicit order per task,
  task i itself skipped, strict ``< 0``, zero gradients never projected onto).
- ``gradvac_weights`` (Wang et al., ICLR 2021): LibMTL's adjustment, the cosine clamped to
  [-1, 1], epsilons relative to the gradient scale (``J`` and ``s J`` give the same weights),
  the EMA of the cosine targets only for the adjusted pairs (LibMTL, the authors' code) or for
  every visited pair (TorchJD); returns the updated targets. One target matrix per
  problem: per-layer GradVac passes one Gram per layer as the N axis.
- ``mgda_weights`` (Sener & Koltun, NeurIPS 2018): exact 2-task closed form returning exact
  {0, 1} at the ends (the official code and LibMTL clamp to 0.001 / 0.999); T > 2 starts from
  the best pair and runs Frank-Wolfe with exact line search (torchjd's iteration, the official
  code's pair start). Frank-Wolfe converges sublinearly when the optimum lies on a face of the
  simplex: at the defaults the optimality gap ``w^T G w - min_r (G w)_r`` is typically
  1e-6 .. 1e-3 of ``max_r G_rr``; it is at most about ``tol * max_r |g_r - d|^2`` when the loop
  stops on ``tol`` rather than ``max_iter``.
- ``min_norm_weights``: the MGDA problem solved exactly, by Wolfe's minimum-norm-point algorithm
  (Wolfe 1976) on G: optimal to rounding (KKT violations ~1e-16 of ``max_r G_rr`` measured up to
  T = 64), where Frank-Wolfe (``mgda_weights``) can end far above the optimum once T > 2.
- ``peltr_weights`` (Lin et al., RecSys 2019, PECsolver): relaxed KKT solve in the
  pseudo-inverse sense (collinear gradients are fine), then projection onto
  ``{w >= lower_bounds, sum w = 1}``.
- ``cagrad_weights`` (Liu et al., NeurIPS 2021): CAGrad's dual on the simplex, exact (active sets
  with closed-form face minimisers).
- ``dual_cone_weights`` (Quinton & Rey 2024, Proposition 1; UPGrad and DualProj):
  ``v = argmin v^T G v s.t. v >= u`` for K bound vectors u per problem, by an exact active set.

Backends (see ``mtlkernels._backend``): ``native`` (C++ CPU kernel, CUDA kernel) and
``reference`` (plain-PyTorch loops, ``mtlkernels.reference.solvers``). There is no Triton
version: each problem is a sequential recurrence (a projection or Frank-Wolfe step depends on
the previous one) over a tiny T x T matrix, so there is nothing to tile; the CUDA kernel runs
one problem per thread.

Not differentiable: the weights are constants of the update (as in every reference
implementation). The compiled ops' Autograd key falls through (csrc/cpu/solvers.cpp) and the
reference backend runs on ``gram.detach()``, so a ``gram`` from a graph is accepted and the
weights never require grad.

Bad input raises before any solve: shapes, dtypes and devices are checked here; values (NaN or
Inf in ``gram``, an ``order`` row that is not a permutation, targets outside [-1, 1], lower
bounds below 0 or summing above 1) are checked by the CPU kernel while it solves and by this
module for the reference backend. The CUDA kernel does not synchronise with the host to report
them: it writes NaN weights for such a problem (and leaves its targets unchanged).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlkernels import _backend, _extension
from mtlkernels.reference import solvers as _ref

_LOWER_BOUNDS_SLACK = 1e-12


# --------------------------------------------------------------------------- argument checks

def _check_gram(op: str, gram) -> bool:
    """Checks ``gram`` is ``[T, T]`` or ``[N, T, T]`` float64; returns True for a single problem."""
    if not isinstance(gram, Tensor):
        raise TypeError(f"{op}: gram must be a Tensor, got {type(gram).__name__}")
    if gram.dim() not in (2, 3) or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"{op}: gram must be [T, T] or [N, T, T] (square per problem), "
                         f"got shape {tuple(gram.shape)}")
    if gram.dtype != torch.float64:
        raise TypeError(f"{op}: gram must be float64, got {gram.dtype}")
    return gram.dim() == 2


def _check_like(op: str, name: str, t, gram: Tensor, dtype: torch.dtype, shape: tuple) -> None:
    """``t`` must be a Tensor of ``shape`` and ``dtype`` on gram's device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        dims = ("N", "T", "T")[3 - gram.dim():][:len(shape)]
        raise ValueError(f"{op}: {name} must be [{', '.join(dims)}] = {list(shape)} to match gram "
                         f"{tuple(gram.shape)}, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} must be {dtype}, got {t.dtype}")
    if t.device != gram.device:
        raise ValueError(f"{op}: {name} is on {t.device} but gram is on {gram.device}")


def _check_order(op: str, order, gram: Tensor) -> None:
    _check_like(op, "order", order, gram, torch.int64, tuple(gram.shape))


def _resolve(op: str, backend: str | None, device: torch.device) -> str:
    """``native`` or ``reference``: this family has no Triton version (see the module docstring)."""
    return _backend.resolve(op, backend, device, has_triton=False)


def _batched(t: Tensor, single: bool) -> Tensor:
    return t.unsqueeze(0) if single else t


# ------------------------------------------------------------------------------- value checks
# Run for the reference backend (the CPU kernel checks the same values while it solves).

def _check_gram_values(op: str, gram: Tensor) -> None:
    bad = ~torch.isfinite(gram).flatten(1).all(dim=1)
    if bool(bad.any()):
        n = int(bad.nonzero()[0])
        raise ValueError(f"{op}: gram[{n}] holds NaN or Inf")


def _check_order_values(op: str, order: Tensor) -> None:
    T = order.shape[-1]
    want = torch.arange(T, device=order.device)
    bad = (order.sort(dim=-1).values != want).any(dim=-1)
    if bool(bad.any()):
        n, i = bad.nonzero()[0].tolist()
        raise ValueError(f"{op}: order[{n}, {i}] must be a permutation of 0..{T - 1}, "
                         f"got {order[n, i].tolist()}")


def _check_target_values(op: str, target: Tensor) -> None:
    bad = ~((target >= -1.0) & (target <= 1.0)).flatten(1).all(dim=1)
    if bool(bad.any()):
        n = int(bad.nonzero()[0])
        raise ValueError(f"{op}: target[{n}] must hold cosine targets in [-1, 1] (no NaN)")


def _check_lower_bound_values(op: str, lower_bounds: Tensor) -> None:
    ok = ((lower_bounds >= 0.0) & (lower_bounds <= 1.0 + _LOWER_BOUNDS_SLACK)).all(dim=1)
    sums = lower_bounds.sum(dim=1)
    bad = ~(ok & (sums <= 1.0 + _LOWER_BOUNDS_SLACK))
    if bool(bad.any()):
        n = int(bad.nonzero()[0])
        raise ValueError(f"{op}: lower_bounds[{n}] must be >= 0 with sum <= 1 (got sum "
                         f"{float(sums[n])}); no weight vector in the simplex meets them")


def _check_values(which: str) -> bool:
    """Whether this module must check values: only the reference backend (the CPU kernel checks
    them itself and the CUDA kernel marks bad problems with NaN weights)."""
    return which == "reference" and not torch.compiler.is_compiling()


# ------------------------------------------------------------------------- fake and vmap rules

def _fake_pcgrad(gram, order):
    return gram.new_empty(gram.shape[0], gram.shape[1])


def _fake_gradvac(gram, order, target, beta, every_pair):
    return (gram.new_empty(gram.shape[0], gram.shape[1]),
            torch.empty_like(target, memory_format=torch.contiguous_format))


def _fake_min_norm(gram):
    return gram.new_empty(gram.shape[0], gram.shape[1])


def _fake_mgda(gram, max_iter, tol):
    return gram.new_empty(gram.shape[0], gram.shape[1])


def _fake_peltr(gram, lower_bounds):
    return gram.new_empty(gram.shape[0], gram.shape[1])


def _fake_cagrad(gram, c):
    return gram.new_empty(gram.shape[0], gram.shape[1])


def _fake_dual_cone(gram, bounds):
    return bounds.new_empty(bounds.shape)


def _batch_first(t, dim, b):
    """``t`` with its vmap dim first, or broadcast to ``b`` copies when unbatched."""
    if dim is None:
        return t.unsqueeze(0).expand(b, *t.shape)
    return t.movedim(dim, 0)


def _vmap_rule(op, n_tensors: int, n_outputs: int):
    """vmap rule folding the vmap batch into the problem axis N of the first n_tensors args."""

    def rule(info, in_dims, *args):
        b = info.batch_size
        tensors = [_batch_first(t, d, b) for t, d in zip(args[:n_tensors], in_dims[:n_tensors])]
        n = tensors[0].shape[1]
        out = op(*[t.reshape(b * n, *t.shape[2:]) for t in tensors], *args[n_tensors:])
        if n_outputs == 1:
            return out.unflatten(0, (b, n)), 0
        return tuple(o.unflatten(0, (b, n)) for o in out), (0,) * n_outputs

    return rule


def _register_rules() -> None:
    ops = torch.ops.mtlk
    torch.library.register_fake("mtlk::pcgrad_weights")(_fake_pcgrad)
    torch.library.register_fake("mtlk::gradvac_weights")(_fake_gradvac)
    torch.library.register_fake("mtlk::mgda_weights")(_fake_mgda)
    torch.library.register_fake("mtlk::min_norm_weights")(_fake_min_norm)
    torch.library.register_fake("mtlk::peltr_weights")(_fake_peltr)
    torch.library.register_vmap("mtlk::pcgrad_weights", _vmap_rule(ops.pcgrad_weights.default, 2, 1))
    torch.library.register_vmap("mtlk::gradvac_weights", _vmap_rule(ops.gradvac_weights.default, 3, 2))
    torch.library.register_vmap("mtlk::mgda_weights", _vmap_rule(ops.mgda_weights.default, 1, 1))
    torch.library.register_vmap("mtlk::min_norm_weights", _vmap_rule(ops.min_norm_weights.default, 1, 1))
    torch.library.register_vmap("mtlk::peltr_weights", _vmap_rule(ops.peltr_weights.default, 2, 1))
    torch.library.register_fake("mtlk::cagrad_weights")(_fake_cagrad)
    torch.library.register_vmap("mtlk::cagrad_weights", _vmap_rule(ops.cagrad_weights.default, 1, 1))
    torch.library.register_fake("mtlk::dual_cone_weights")(_fake_dual_cone)
    torch.library.register_vmap("mtlk::dual_cone_weights", _vmap_rule(ops.dual_cone_weights.default, 2, 1))


if _extension.native_available():
    _register_rules()


# ------------------------------------------------------------------------------ public ops

def random_orders(n: int, T: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """``[n, T, T]`` int64: for each problem and task, a uniformly random permutation of 0..T-1
    (the random projection order of PCGrad and GradVac)."""
    keys = torch.rand(n, T, T, generator=generator, device=device)
    return keys.argsort(dim=-1)


def pcgrad_weights(gram: Tensor, order: Tensor, *, backend: str | None = None) -> Tensor:
    """PCGrad weights: ``d = J^T w`` is the sum of the projected task gradients.

    For each task i the coefficients ``c = e_i`` of ``gpc_i = J^T c`` are updated, for each j in
    ``order[..., i, :]`` with j != i: if ``<gpc_i, g_j> = (G c)_j < 0`` and ``G_jj > 0``,
    ``c_j -= (G c)_j / G_jj``. Returns ``w = sum_i c`` (sum convention: no conflict gives ones).

    Args:
        gram: ``[T, T]`` or ``[N, T, T]`` float64 Gram matrices ``J J^T`` (symmetric PSD).
        order: int64, same shape: ``order[n, i]`` is a permutation of ``0..T-1``, the order in
            which task i is projected (entry i is skipped). See ``random_orders``.
        backend: ``"native"``, ``"reference"`` or None (``MTLK_BACKEND``, else auto).

    Returns:
        ``[T]`` or ``[N, T]`` float64 weights.
    """
    op = "pcgrad_weights"
    single = _check_gram(op, gram)
    _check_order(op, order, gram)
    which = _resolve(op, backend, gram.device)
    g, o = _batched(gram, single), _batched(order, single)
    if which == "native":
        w = torch.ops.mtlk.pcgrad_weights(g, o)
    else:
        if _check_values(which):
            _check_gram_values(op, g)
            _check_order_values(op, o)
        w = _ref.pcgrad_weights(g.detach(), o)
    return w.squeeze(0) if single else w


def gradvac_weights(gram: Tensor, order: Tensor, target: Tensor, beta: float, *, every_pair: bool = False,
                    backend: str | None = None) -> tuple[Tensor, Tensor]:
    """GradVac weights and updated cosine targets.

    As ``pcgrad_weights``, but for each visited pair ``phi = cos(gpc_i, g_j)`` is compared with
    the target ``target[..., i, j]``: when ``phi < target`` (and ``g_j != 0``) a multiple of
    ``g_j`` is added to ``gpc_i`` that makes the cosine equal the target; then
    ``target_ij <- (1 - beta) target_ij + beta phi`` only for the pairs just adjusted
    (``every_pair=False``: LibMTL and the authors' SamsungLabs code) or for every visited pair
    (``True``: TorchJD).
    ``phi`` is clamped to [-1, 1]; the epsilons are ``1e-8 max_k G_kk`` (cosine) and
    ``1e-8 sqrt(max_k G_kk)`` (adjustment). ``target = 0, beta = 0`` is PCGrad.

    Args:
        gram: ``[T, T]`` or ``[N, T, T]`` float64.
        order: int64, same shape as gram (see ``pcgrad_weights``).
        target: float64, same shape: cosine targets in [-1, 1] (start from zeros).
        beta: EMA rate in [0, 1] (LibMTL default 0.5; the paper uses 0.01).
        every_pair: the EMA rule (see above).
        backend: ``"native"``, ``"reference"`` or None.

    Returns:
        ``(w [T] or [N, T], new target)``; the input ``target`` is not modified.
    """
    op = "gradvac_weights"
    single = _check_gram(op, gram)
    _check_order(op, order, gram)
    _check_like(op, "target", target, gram, torch.float64, tuple(gram.shape))
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"{op}: beta (EMA rate) must be in [0, 1], got {beta}")
    which = _resolve(op, backend, gram.device)
    g, o, t = _batched(gram, single), _batched(order, single), _batched(target, single)
    if which == "native":
        w, new_t = torch.ops.mtlk.gradvac_weights(g, o, t, beta, bool(every_pair))
    else:
        if _check_values(which):
            _check_gram_values(op, g)
            _check_target_values(op, t)
            _check_order_values(op, o)
        w, new_t = _ref.gradvac_weights(g.detach(), o, t.detach(), beta, bool(every_pair))
    return (w.squeeze(0), new_t.squeeze(0)) if single else (w, new_t)


def mgda_weights(gram: Tensor, max_iter: int = 250, tol: float = 1e-5, *,
                 backend: str | None = None) -> Tensor:
    """MGDA min-norm weights: w in the simplex minimising ``|J^T w|^2 = w^T G w``.

    T = 1 gives ``[1]``; T = 2 the exact closed form (exact 0 and 1 at the ends); T > 2 the best
    pair, then at most ``max_iter`` Frank-Wolfe iterations with exact line search, stopping
    after a step ``1 - gamma`` below ``tol`` (or zero). Zero gradients give a valid simplex point
    (all-zero G gives ``e_0``).

    Args:
        gram: ``[T, T]`` or ``[N, T, T]`` float64.
        max_iter: iteration cap (>= 0; the official code's 250).
        tol: step-size stopping threshold (>= 0; the official code's 1e-5).
        backend: ``"native"``, ``"reference"`` or None.
    """
    op = "mgda_weights"
    single = _check_gram(op, gram)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"{op}: max_iter must be an int >= 0, got {max_iter!r}")
    tol = float(tol)
    if not (0.0 <= tol < float("inf")):
        raise ValueError(f"{op}: tol must be finite and >= 0, got {tol}")
    which = _resolve(op, backend, gram.device)
    g = _batched(gram, single)
    if which == "native":
        w = torch.ops.mtlk.mgda_weights(g, max_iter, tol)
    else:
        if _check_values(which):
            _check_gram_values(op, g)
        w = _ref.mgda_weights(g.detach(), max_iter, tol)
    return w.squeeze(0) if single else w


def min_norm_weights(gram: Tensor, *, backend: str | None = None) -> Tensor:
    """The exact min-norm weights: w in the simplex minimising ``|J^T w|^2 = w^T G w``, by Wolfe's
    minimum-norm-point algorithm (a corral of affinely independent gradients, each minor cycle an
    exact affine minimisation, finitely many steps). T = 1 gives ``[1]``; all-zero G gives
    ``e_0``; collinear and rank-deficient G are fine (the corral never holds an affinely
    dependent set).

    Args:
        gram: ``[T, T]`` or ``[N, T, T]`` float64.
        backend: ``"native"``, ``"reference"`` or None.
    """
    op = "min_norm_weights"
    single = _check_gram(op, gram)
    which = _resolve(op, backend, gram.device)
    g = _batched(gram, single)
    if which == "native":
        w = torch.ops.mtlk.min_norm_weights(g)
    else:
        if _check_values(which):
            _check_gram_values(op, g)
        w = _ref.min_norm_weights(g.detach())
    return w.squeeze(0) if single else w


def peltr_weights(gram: Tensor, lower_bounds: Tensor, *, backend: str | None = None) -> Tensor:
    """PE-LTR (PECsolver) weights with lower bounds: ``w >= lower_bounds``, ``sum w = 1``.

    Relaxed step: the KKT system of ``min w^T G w s.t. sum w = 1`` with ``w = what + c`` solved
    in the pseudo-inverse sense (minimum ``|what|`` when gradients are collinear); then ``what`` is
    projected onto ``{v >= 0, sum v = 1 - sum c}`` and ``w = v + c``. For T = 2 and ``c = 0`` this
    is the MGDA closed form; for T > 2 it is the paper's heuristic, not the exact constrained QP.

    Args:
        gram: ``[T, T]`` or ``[N, T, T]`` float64.
        lower_bounds: ``[T]`` or ``[N, T]`` float64 ``c``, ``c >= 0`` and ``sum c <= 1``
            (``sum c = 1`` returns ``c``).
        backend: ``"native"``, ``"reference"`` or None.
    """
    op = "peltr_weights"
    single = _check_gram(op, gram)
    _check_like(op, "lower_bounds", lower_bounds, gram, torch.float64, tuple(gram.shape[:-1]))
    which = _resolve(op, backend, gram.device)
    g, c = _batched(gram, single), _batched(lower_bounds, single)
    if which == "native":
        w = torch.ops.mtlk.peltr_weights(g, c)
    else:
        if _check_values(which):
            _check_gram_values(op, g)
            _check_lower_bound_values(op, c)
        w = _ref.peltr_weights(g.detach(), c.detach())
    return w.squeeze(0) if single else w


def _check_bound_values(op: str, bounds: Tensor) -> None:
    bad = ~torch.isfinite(bounds).all(dim=-1)
    if bool(bad.any()):
        n, k = bad.nonzero()[0].tolist()
        raise ValueError(f"{op}: bounds[{n}, {k}] holds NaN or Inf")


def dual_cone_weights(gram: Tensor, bounds: Tensor, *, backend: str | None = None) -> Tensor:
    """Dual-cone projection weights: for each bound vector u, ``v = argmin v^T G v s.t. v >= u``,
    so that ``J^T v`` is the projection of ``J^T u`` onto the dual cone ``{x : J x >= 0}`` of the
    task gradients (Quinton & Rey 2024, Proposition 1): the combination that conflicts with no
    task, closest to ``J^T u``. Exact (an active set with Cholesky solves on the free variables,
    finitely many steps); G should be positive definite for a unique v (UPGrad and DualProj add
    ``reg_eps`` to its diagonal), a singular free set stops at the last point reached. G = 0 gives
    ``v = u``.

    Args:
        gram: ``[T, T]`` or ``[N, T, T]`` float64.
        bounds: ``[K, T]`` or ``[N, K, T]`` float64, the vectors u (UPGrad: the rows of
            ``diag(1/T)``; DualProj: one row ``1/T``).
        backend: ``"native"``, ``"reference"`` or None.

    Returns:
        ``[K, T]`` or ``[N, K, T]`` float64 weights.
    """
    op = "dual_cone_weights"
    single = _check_gram(op, gram)
    T = gram.shape[-1]
    if not isinstance(bounds, Tensor) or bounds.dim() != gram.dim() or bounds.shape[-1] != T or \
            (not single and bounds.shape[0] != gram.shape[0]):
        want = f"[K, {T}]" if single else f"[{gram.shape[0]}, K, {T}]"
        raise ValueError(f"{op}: bounds must be {want}, got "
                         f"{tuple(bounds.shape) if isinstance(bounds, Tensor) else type(bounds).__name__}")
    if bounds.dtype != torch.float64 or bounds.device != gram.device:
        raise TypeError(f"{op}: bounds must be float64 on {gram.device}, got {bounds.dtype} on {bounds.device}")
    which = _resolve(op, backend, gram.device)
    g, u = _batched(gram, single), _batched(bounds, single)
    if which == "native":
        v = torch.ops.mtlk.dual_cone_weights(g, u)
    else:
        if _check_values(which):
            _check_gram_values(op, g)
            _check_bound_values(op, u)
        v = _ref.dual_cone_weights(g.detach(), u.detach())
    return v.squeeze(0) if single else v


def cagrad_weights(gram: Tensor, c: float, *, backend: str | None = None) -> Tensor:
    """CAGrad's dual weights: ``w = argmin_{w in simplex} b^T w + a |J^T w|`` with ``b = G 1 / T``
    (so ``b^T w = <g0, J^T w>``, g0 the mean gradient) and ``a = c |g0|`` (Liu et al., NeurIPS
    2021, the dual of ``max_d min_i <g_i, d>`` s.t. ``|d - g0| <= c |g0|``). Exact: Wolfe-style
    active sets whose face minimisers have a closed form, finitely many steps (the official code
    runs SLSQP, TorchJD an SOCP solver). The update's weights are then
    ``1 / T + (a / |J^T w|) w`` (``mtlkernels.balance.CAGrad``). ``c = 0`` gives the vertex of
    smallest ``<g0, g_i>``; all-zero G gives ``e_0``.

    Args:
        gram: ``[T, T]`` or ``[N, T, T]`` float64.
        c: the radius of the ball around g0, relative to ``|g0|`` (>= 0).
        backend: ``"native"``, ``"reference"`` or None.
    """
    op = "cagrad_weights"
    single = _check_gram(op, gram)
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
        raise ValueError(f"{op}: c must be finite and >= 0, got {c}")
    which = _resolve(op, backend, gram.device)
    g = _batched(gram, single)
    if which == "native":
        w = torch.ops.mtlk.cagrad_weights(g, float(c))
    else:
        if _check_values(which):
            _check_gram_values(op, g)
        w = _ref.cagrad_weights(g.detach(), float(c))
    return w.squeeze(0) if single else w
