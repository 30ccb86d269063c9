"""Agreement with TorchJD's aggregators on the same float64 Jacobians: the relative difference
``|d_ours - d_torchjd| / |d_torchjd|`` of the update, for the methods both libraries define the
same way (at TorchJD's settings, scale conventions aligned), on random, low-rank conflicting and
nearly collinear J.

    PYTHONPATH=<dir with torchjd 0.18, qpsolvers, quadprog> python bench/torchjd_agreement.py

(install them with ``pip install --target DIR --no-deps torchjd==0.18.0 qpsolvers quadprog``, and
for CAGrad and Nash-MTL ``cvxpy clarabel ecos osqp scs qdldl``: a plain install would pull another
torch). Nash-MTL differs by definition: TorchJD runs the paper's convex-concave approximation
(stopping at a residual of 1e-3), ours solves the bargaining fixed point. Bar (the second-ring issue): within 1e-6.
"""
from __future__ import annotations

import torch

from mtlkernels import balance

try:
    from torchjd import aggregation as tjd
except ImportError as exc:  # pragma: no cover - a bench, not a test
    raise SystemExit(f"torchjd is not importable ({exc}); see the docstring") from None

#: name -> (ours, theirs, our update's scale over theirs: Aligned-MTL sums the aligned gradients as
#: the authors' code does, TorchJD averages them)
PAIRS = {"UPGrad": (balance.UPGrad, tjd.UPGrad, lambda T: 1), "DualProj": (balance.DualProj, tjd.DualProj, lambda T: 1),
         "IMTL-G": (balance.IMTLG, tjd.IMTLG, lambda T: 1),
         "Aligned-MTL": (balance.AlignedMTL, tjd.AlignedMTL, lambda T: T)}
if hasattr(tjd, "NashMTL"):  # needs cvxpy and ecos: TorchJD runs the paper's approximation, ours the fixed point
    PAIRS["Nash-MTL"] = (balance.NashMTL, None, lambda T: 1)
if hasattr(tjd, "CAGrad"):  # needs cvxpy and clarabel: TorchJD's update is not rescaled
    PAIRS["CAGrad c=0.5"] = (lambda: balance.CAGrad(0.5, rescale=0), lambda: tjd.CAGrad(c=0.5), lambda T: 1)


def jacobians(T: int, P: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    yield "random", torch.randn(T, P, generator=g, dtype=torch.float64)
    basis = torch.randn(3, P, generator=g, dtype=torch.float64)
    J = torch.randn(T, 3, generator=g, dtype=torch.float64) @ basis
    J[: T // 2] *= -1
    yield "low-rank, conflicting", J
    a = torch.randn(P, generator=g, dtype=torch.float64)
    yield "collinear", torch.stack([(k + 1) * (-1) ** k * a for k in range(T)]) + 1e-3 * torch.randn(T, P, generator=g,
                                                                                                     dtype=torch.float64)


def main() -> None:
    print("| method | T | J | max relative difference of the update (5 seeds) |")
    print("|---|---|---|---|")
    for name, (ours, theirs, scale) in PAIRS.items():
        for T in (2, 4, 8, 16):
            worst: dict[str, float] = {}
            for seed in range(5):
                for kind, J in jacobians(T, 1000, seed):
                    d, _ = balance.aggregate(ours(), J)
                    d = d / scale(T)
                    ref = (theirs or (lambda: tjd.NashMTL(n_tasks=T)))()(J)
                    rel = float((d - ref).norm() / ref.norm().clamp_min(1e-300))
                    worst[kind] = max(worst.get(kind, 0.0), rel)
            for kind, rel in worst.items():
                print(f"| {name} | {T} | {kind} | {rel:.1e} |", flush=True)


if __name__ == "__main__":
    main()
