"""Reference T x T solvers of the gradient methods: the oracle of the compiled kernels.

Each function takes a batch of Gram matrices ``gram [N, T, T]`` (float64, symmetric PSD,
``G = J J^T`` of the T task gradients) and returns per-task weights ``[N, T]`` so that the
combined update is ``d = J^T w``. Written as plain loops over problems, tasks and pairs,
recomputing ``G c`` from scratch at every step (the kernels in csrc/include/mtlk/solvers.h
update it incrementally). Arguments are not validated here; ``mtlkernels.ops.solvers`` does
that. Conventions follow specs/ALGORITHMS.md part 3:

- PCGrad (Yu et al., NeurIPS 2020): Gram form of torchjd's ``_pcgrad.py``, with LibMTL's
  order semantics (an explicit order per task, task i itself skipped, strict ``< 0``, never
  a projection onto a zero gradient). Sum convention: no conflict gives ``w = 1``.
- GradVac (Wang et al., ICLR 2021): LibMTL's rule and eps (1e-8 in both denominators), the EMA
  of the cosine target updated for every visited pair with the cosine taken before the
  adjustment. ``target = 0, beta = 0`` reproduces PCGrad (up to the eps).
- MGDA (Sener & Koltun, NeurIPS 2018): exact two-task closed form (exact {0, 1} at the ends,
  not the 0.001 / 0.999 of the official code), best-pair start plus Frank-Wolfe for T > 2.
- PE-LTR (Lin et al., RecSys 2019, PECsolver): pseudo-inverse solve of the relaxed KKT system,
  then Euclidean projection onto ``{w >= c, sum w = 1}``.

``pcgrad_full`` and ``gradvac_full`` run the same methods on the gradients ``J [T, P]``
themselves (LibMTL style), to test the Gram forms.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: GradVac's epsilon, relative to the gradient scale (LibMTL's absolute 1e-8 times max_k G_kk in
#: the cosine's denominator, times its square root in the adjustment's)
GRADVAC_EPS = 1e-8
# PE-LTR: eigenvalues of the KKT matrix at or below this times the largest are treated as zero
# (the matrix is built on G / max_k G_kk). The C++ kernel decides the rank differently, by
# pivoted-Cholesky pivots of G / max_k G_kk at the same 1e-10; the two agree unless G has an
# eigenvalue within a few orders of magnitude of that threshold.
PELTR_RTOL = 1e-10


# ---------------------------------------------------------------------------------- PCGrad

def pcgrad_weights(gram: Tensor, order: Tensor) -> Tensor:
    """PCGrad weights ``[N, T]`` from ``gram [N, T, T]`` and ``order [N, T, T]`` (int64).

    For each task i: ``c = e_i``; for j in ``order[n, i]`` (j != i): ``ip = (G c)_j``; if
    ``ip < 0`` and ``G_jj > 0``: ``c_j -= ip / G_jj``. Then ``w = sum_i c``.
    """
    N, T, _ = gram.shape
    w = torch.zeros(N, T, dtype=gram.dtype, device=gram.device)
    for n in range(N):
        G = gram[n]
        for i in range(T):
            c = torch.zeros(T, dtype=gram.dtype, device=gram.device)
            c[i] = 1.0
            for j in order[n, i].tolist():
                if j == i:
                    continue
                ip = float(G[j] @ c)
                gjj = float(G[j, j])
                if ip < 0.0 and gjj > 0.0:
                    c[j] -= ip / gjj
            w[n] += c
    return w


def pcgrad_full(J: Tensor, order: Tensor) -> Tensor:
    """PCGrad on the gradients ``J [T, P]`` themselves, ``order [T, T]``: returns ``d [P]``.

    LibMTL's loop (projections always against the original ``g_j``), skipping ``j == i``,
    projecting only when ``<gpc_i, g_j> < 0`` and ``g_j != 0``; ``d = sum_i gpc_i``.
    """
    T = J.shape[0]
    d = torch.zeros_like(J[0])
    for i in range(T):
        g = J[i].clone()
        for j in order[i].tolist():
            if j == i:
                continue
            ip = float(g @ J[j])
            nj = float(J[j] @ J[j])
            if ip < 0.0 and nj > 0.0:
                g = g - (ip / nj) * J[j]
        d += g
    return d


# --------------------------------------------------------------------------------- GradVac

def _gradvac_delta(norm_c: float, norm_j: float, phi: float, phihat: float, eps: float) -> float:
    """Coefficient of g_j that moves cos(gpc_i, g_j) from phi to phihat (LibMTL)."""
    root_hat = math.sqrt(max(1.0 - phihat * phihat, 0.0))
    root_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
    return norm_c * (phihat * root_phi - phi * root_hat) / (norm_j * root_hat + eps)


def _gradvac_scale(diagonal: Tensor) -> float:
    """The squared gradient scale the epsilons are relative to: ``max_k G_kk`` (1 if all zero)."""
    scale = float(diagonal.max()) if diagonal.numel() else 0.0
    return scale if scale > 0.0 else 1.0


def _cosine(raw: float) -> float:
    return min(max(raw, -1.0), 1.0)


def gradvac_weights(gram: Tensor, order: Tensor, target: Tensor, beta: float,
                    every_pair: bool) -> tuple[Tensor, Tensor]:
    """GradVac weights ``[N, T]`` and the updated cosine targets ``[N, T, T]``.

    For each task i: ``c = e_i``; for j in ``order[n, i]`` (j != i):
    ``phi = clamp((G c)_j / (sqrt(c^T G c) sqrt(G_jj) + 1e-8 s), -1, 1)`` with
    ``s = max_k G_kk``; if ``phi < target_ij`` (and ``G_jj > 0``) add ``_gradvac_delta`` (eps
    ``1e-8 sqrt(s)``) to ``c_j``; then ``target_ij <- (1 - beta) target_ij + beta phi`` for
    every visited pair (``every_pair``: TorchJD) or only the adjusted ones (LibMTL). ``w = sum_i c``.
    ``target`` is not modified.
    """
    N, T, _ = gram.shape
    target = target.clone()
    w = torch.zeros(N, T, dtype=gram.dtype, device=gram.device)
    for n in range(N):
        G = gram[n]
        scale = _gradvac_scale(G.diagonal())
        for i in range(T):
            c = torch.zeros(T, dtype=gram.dtype, device=gram.device)
            c[i] = 1.0
            for j in order[n, i].tolist():
                if j == i:
                    continue
                Gc = G @ c
                gjj = float(G[j, j])
                norm_c = math.sqrt(max(float(c @ Gc), 0.0))
                norm_j = math.sqrt(max(gjj, 0.0))
                phi = _cosine(float(Gc[j]) / (norm_c * norm_j + GRADVAC_EPS * scale))
                phihat = float(target[n, i, j])
                adjust = phi < phihat and gjj > 0.0
                if adjust:
                    c[j] += _gradvac_delta(norm_c, norm_j, phi, phihat, GRADVAC_EPS * math.sqrt(scale))
                if adjust or every_pair:
                    target[n, i, j] = (1.0 - beta) * phihat + beta * phi
            w[n] += c
    return w, target


def gradvac_full(J: Tensor, order: Tensor, target: Tensor, beta: float,
                 every_pair: bool) -> tuple[Tensor, Tensor]:
    """GradVac on ``J [T, P]`` itself with ``order [T, T]`` and ``target [T, T]``.

    Returns ``(d [P], updated target [T, T])``; same rule as ``gradvac_weights`` with norms
    and inner products of the vectors.
    """
    T = J.shape[0]
    target = target.clone()
    d = torch.zeros_like(J[0])
    scale = _gradvac_scale((J * J).sum(1))
    for i in range(T):
        g = J[i].clone()
        for j in order[i].tolist():
            if j == i:
                continue
            norm_c = float(g.norm())
            norm_j = float(J[j].norm())
            phi = _cosine(float(g @ J[j]) / (norm_c * norm_j + GRADVAC_EPS * scale))
            phihat = float(target[i, j])
            adjust = phi < phihat and norm_j > 0.0
            if adjust:
                g = g + _gradvac_delta(norm_c, norm_j, phi, phihat, GRADVAC_EPS * math.sqrt(scale)) * J[j]
            if adjust or every_pair:
                target[i, j] = (1.0 - beta) * phihat + beta * phi
        d += g
    return d, target


# ------------------------------------------------------------------------------------ MGDA

def min_norm_pair(a: float, b: float, c: float) -> tuple[float, float]:
    """``(gamma, cost)`` of the min-norm point ``gamma v1 + (1 - gamma) v2`` of a segment.

    ``a = |v1|^2, b = <v1, v2>, c = |v2|^2``. Exact ends: ``b >= a`` gives gamma = 1 (first, so
    equal or zero vectors are no 0/0), ``b >= c`` gives gamma = 0 (the official MGDA code
    returns 0.999 / 0.001 there).
    """
    if b >= a:
        return 1.0, a
    if b >= c:
        return 0.0, c
    gamma = (c - b) / (a + c - 2.0 * b)
    return gamma, c + gamma * (b - c)


def mgda_weights(gram: Tensor, max_iter: int = 250, tol: float = 1e-5) -> Tensor:
    """MGDA min-norm weights ``[N, T]``: w in the simplex minimising ``w^T G w``.

    T = 1: ``[1]``. T = 2: ``min_norm_pair``. T > 2: the pair (i < j) of smallest cost (first on
    ties), then Frank-Wolfe: ``t = argmin_r (G w)_r`` (first on ties), exact line search
    between w and ``e_t`` with ``min_norm_pair(w^T G w, (G w)_t, G_tt)``,
    ``w <- gamma w + (1 - gamma) e_t``, stopping after an iteration whose step ``1 - gamma`` is
    below ``tol`` (or zero), or after ``max_iter`` iterations.
    """
    N, T, _ = gram.shape
    w = torch.zeros(N, T, dtype=gram.dtype, device=gram.device)
    for n in range(N):
        G = gram[n]
        if T == 1:
            w[n, 0] = 1.0
            continue
        best = None
        for i in range(T):
            for j in range(i + 1, T):
                gamma, cost = min_norm_pair(float(G[i, i]), float(G[i, j]), float(G[j, j]))
                if best is None or cost < best[0]:
                    best = (cost, i, j, gamma)
        _, i, j, gamma = best
        v = torch.zeros(T, dtype=gram.dtype, device=gram.device)
        v[i], v[j] = gamma, 1.0 - gamma
        if T > 2:
            for _ in range(max_iter):
                Gv = G @ v
                t = int(torch.argmin(Gv))  # first index on ties
                gamma, _ = min_norm_pair(float(v @ Gv), float(Gv[t]), float(G[t, t]))
                step = 1.0 - gamma
                v = gamma * v
                v[t] += step
                if step < tol or step <= 0.0:
                    break
        w[n] = v
    return w


MIN_NORM_OPT_TOL = 1e-13  # times max_k G_kk: an entering gradient must beat |x|^2 by more
MIN_NORM_POS_TOL = 1e-14  # a corral weight at or below this leaves the corral


def _affine_min(G: Tensor, S: list[int]) -> Tensor | None:
    """argmin a^T G_SS a s.t. sum a = 1 (the KKT system), or None when it is singular."""
    s = len(S)
    M = torch.zeros(s + 1, s + 1, dtype=torch.float64)
    M[:s, :s] = G[S][:, S]
    M[:s, s] = M[s, :s] = 1.0
    rhs = torch.zeros(s + 1, dtype=torch.float64)
    rhs[s] = 1.0
    if torch.linalg.matrix_rank(M, rtol=1e-14) < s + 1:
        return None
    return torch.linalg.solve(M, rhs)[:s]


def _scaled_problems(gram: Tensor, out: Tensor):
    """Yields ``(n, G_n / max_k (G_n)_kk)`` (float64, on the CPU) for every problem of ``gram``
    ``[N, T, T]`` with a non-zero gradient; an all-zero problem gets ``e_0`` in ``out`` (the
    simplex solvers' convention) and is skipped, as T = 0 is."""
    for n in range(gram.shape[0]):
        if gram.shape[1] == 0:
            continue
        G = gram[n].detach().cpu().double()
        scale = float(G.diagonal().max())
        if not scale > 0.0:
            out[n, 0] = 1.0
            continue
        yield n, G / scale


def min_norm_weights(gram: Tensor) -> Tensor:
    """Exact min-norm weights ``[N, T]`` by Wolfe's minimum-norm-point algorithm (Wolfe 1976),
    the steps of ``mtlk::min_norm_solve``: start at the shortest gradient; add the gradient of
    smallest ``<g_j, x>`` while it beats ``|x|^2``; move to the corral's affine minimiser,
    stepping back to the simplex's boundary and dropping gradients when it leaves."""
    N, T, _ = gram.shape
    out = torch.zeros(N, T, dtype=gram.dtype, device=gram.device)
    for n, G in _scaled_problems(gram, out):
        S = [int(torch.argmin(G.diagonal()))]
        lam = torch.ones(1, dtype=torch.float64)
        for _ in range(4 * T + 4):
            Gx = G[:, S] @ lam
            xx = float(lam @ Gx[S])
            enter = int(torch.argmin(Gx))
            if not float(Gx[enter]) < xx - MIN_NORM_OPT_TOL or enter in S:
                break
            S, lam = S + [enter], torch.cat([lam, torch.zeros(1, dtype=torch.float64)])
            stuck = False
            for _ in range(T + 2):
                alpha = _affine_min(G, S)
                if alpha is None:
                    S, lam, stuck = S[:-1], lam[:-1], True
                    break
                if bool((alpha > MIN_NORM_POS_TOL).all()):
                    lam = alpha
                    break
                out_ = (alpha <= MIN_NORM_POS_TOL) & (lam - alpha > 0)
                theta = min([1.0] + [float(lam[i] / (lam[i] - alpha[i])) for i in range(len(S)) if out_[i]])
                lam = lam + theta * (alpha - lam)
                keep = [i for i in range(len(S)) if float(lam[i]) > MIN_NORM_POS_TOL]
                S, lam = [S[i] for i in keep], lam[keep]
                lam = lam / lam.sum()
            if stuck:
                break
        for i, k in enumerate(S):
            out[n, k] += lam[i].to(out.dtype)
    return out


# ---------------------------------------------------------------------------------- PE-LTR

def project_scaled_simplex(u: Tensor, s: float) -> Tensor:
    """Euclidean projection of ``u [T]`` onto ``{v >= 0, sum v = s}`` (s > 0), sort-based."""
    srt, _ = torch.sort(u, descending=True)
    cum = torch.cumsum(srt, 0)
    k = torch.arange(1, u.numel() + 1, dtype=u.dtype, device=u.device)
    theta = (cum - s) / k
    rho = int(torch.nonzero(srt - theta > 0).max())
    return torch.clamp(u - theta[rho], min=0.0)


def peltr_weights(gram: Tensor, lower_bounds: Tensor) -> Tensor:
    """PE-LTR (PECsolver) weights ``[N, T]`` with lower bounds ``c = lower_bounds [N, T]``.

    Relaxed step: ``[what; lambda] = pinv(M) z`` with ``M = [[G, 1], [1^T, 0]]`` and
    ``z = [-G c; 1 - sum c]``, G scaled by ``1 / max_k G_kk`` first (the weights do not depend on
    the scale, the rank cut-off does). Projection step: what onto ``{v >= 0, sum v = 1 - sum c}``;
    ``w = v + c``. ``sum c >= 1`` gives ``w = c``; T = 1 gives ``[1]``.
    """
    N, T, _ = gram.shape
    w = torch.zeros(N, T, dtype=gram.dtype, device=gram.device)
    for n in range(N):
        c = lower_bounds[n]
        if T == 1:
            w[n, 0] = 1.0
            continue
        s = 1.0 - float(c.sum())
        if s <= 0.0:
            w[n] = c
            continue
        G = gram[n]
        scale = float(torch.diagonal(G).max())
        G = G / scale if scale > 0.0 else torch.zeros_like(G)
        M = torch.zeros(T + 1, T + 1, dtype=gram.dtype, device=gram.device)
        M[:T, :T] = G
        M[:T, T] = 1.0
        M[T, :T] = 1.0
        z = torch.cat([-(G @ c), torch.tensor([s], dtype=gram.dtype, device=gram.device)])
        what = (torch.linalg.pinv(M, rtol=PELTR_RTOL, hermitian=True) @ z)[:T]
        w[n] = project_scaled_simplex(what, s) + c
    return w


def dual_cone_weights(gram: Tensor, bounds: Tensor) -> Tensor:
    """``[N, K, T]``: for each problem n and bound vector k, ``v = argmin v^T G v s.t. v >= u``
    (Quinton & Rey 2024, Proposition 1: ``J^T v`` is the projection of ``J^T u`` onto the dual
    cone of the rows of J), the steps of ``mtlk::dual_cone_solve``: on ``z = v - u >= 0``, free
    the bound with the most negative ``(G v)_j``, solve ``G_FF z_F = -(G u)_F`` on the free set,
    step back to the boundary when that leaves ``z >= 0``; until no bound's gradient is negative."""
    N, K, T = bounds.shape
    out = torch.zeros(N, K, T, dtype=torch.float64, device=bounds.device)
    for n in range(N):
        G = gram[n].detach().cpu().double()
        scale = float(G.diagonal().max()) if T else 0.0
        for k in range(K):
            u = bounds[n, k].detach().cpu().double()
            out[n, k] = u if not scale > 0.0 else u + _dual_cone_z(G, u, scale)
    return out


def _dual_cone_z(G: Tensor, u: Tensor, scale: float) -> Tensor:
    T = G.shape[0]
    q = G @ u
    z = torch.zeros(T, dtype=torch.float64)
    free: list[int] = []
    umax = float(u.abs().max())
    for _ in range(3 * T + 3):
        size = umax + (float(z[free].max()) if free else 0.0)
        g = q + G @ z
        bound = [i for i in range(T) if i not in free]
        if not bound:
            break
        enter = min(bound, key=lambda i: float(g[i]))
        if not float(g[enter]) < -1e-13 * scale * size:
            break
        free.append(enter)
        stuck = False
        for minor in range(T + 2):
            if not free:
                break
            A = G[free][:, free]
            if float(torch.linalg.eigvalsh(A).min()) <= 1e-14 * scale:
                stuck = True
                break
            s = torch.linalg.solve(A, -q[free])
            if bool((s > 1e-15 * size).all()):
                z[free] = s
                break
            if minor == 0 and not float(s[-1]) > 0.0:
                stuck = True
                break
            zf = z[free]
            alpha = 1.0
            for a, b in zip(zf.tolist(), s.tolist()):
                if b <= 1e-15 * size and a - b > 0.0:
                    alpha = min(alpha, a / (a - b))
            new = zf + alpha * (s - zf)
            keep = [i for i, val in zip(free, new.tolist()) if val > 1e-15 * size]
            for i, val in zip(free, new.tolist()):
                z[i] = val if i in keep else 0.0
            free = keep
        if stuck:
            break
    return z


def cagrad_weights(gram: Tensor, c: float) -> Tensor:
    """CAGrad's dual weights ``[N, T]``, ``argmin_{w in simplex} b^T w + a |J^T w|`` (b = G 1 / T,
    a = c |g0|), by a route independent of ``mtlk::cagrad_solve``: at the optimum with
    ``r = |J^T w| > 0`` the weights also minimise ``b^T w + a/(2r) w^T G w``, whose minimiser is the
    min-norm point of the shifted gradients ``g_i + g0 / t`` (``t = a / r``); so bisect on
    ``log t`` for the fixed point ``t |J^T w(t)| = a``, each ``w(t)`` an exact min-norm solve."""
    N, T, _ = gram.shape
    out = torch.zeros(N, T, dtype=torch.float64, device=gram.device)
    for n, G in _scaled_problems(gram, out):
        b = G.sum(1) / T
        a = c * math.sqrt(max(float(G.sum()), 0.0)) / T
        if a == 0.0:
            out[n, int(torch.argmin(b))] = 1.0
            continue

        def w_of(t: float) -> Tensor:
            shifted = G + (b[:, None] + b[None, :]) / t + float(b.sum()) / T / t ** 2
            return min_norm_weights(shifted[None])[0]

        def h(t: float) -> float:
            w = w_of(t)
            return t * math.sqrt(max(float(w @ G @ w), 0.0)) - a

        lo, hi = math.log(1e-12), math.log(1e12)
        if h(math.exp(hi)) <= 0.0:  # |J^T w| -> 0: a Pareto-stationary point
            out[n] = w_of(math.exp(hi))
            continue
        for _ in range(200):
            mid = (lo + hi) / 2
            if h(math.exp(mid)) > 0.0:
                hi = mid
            else:
                lo = mid
            if hi - lo < 1e-13:
                break
        out[n] = w_of(math.exp((lo + hi) / 2))
    return out
