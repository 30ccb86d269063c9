"""Prints the T x T solver table: median microseconds per call of each native solver against
its plain-PyTorch reference, on one thread, for T in {2, 4, 8, 16} and N problems per call.

    python bench/solvers_bench.py [--reps 200] [--N 1 64] [--T 2 4 8 16]

Columns: "public" is the mtlkernels.ops function (argument checks + backend choice + op),
"op" the bare torch.ops.mtlk call (dispatcher + kernel), "reference" the reference backend
(mtlkernels.reference.solvers, Python loops). The project bar: the solver alone under 50 us
per call for T <= 16 at N = 1, dispatch included. Inputs: Gram of random gradients with
P = 64, random orders and targets, lower bounds 0.5 / T each; MGDA at its defaults
(max_iter 250, tol 1e-5); the dual-cone solver on the Gram regularised as UPGrad does, with
T bound vectors per problem (UPGrad: one problem per task, so divide by T for the per-problem
time) or one (DualProj).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians  # noqa: E402

from mtlkernels.balance.dual_cone import regularized_gram  # noqa: E402
from mtlkernels.ops import solvers as S  # noqa: E402


def inputs(N: int, T: int, P: int = 64):
    g = torch.Generator().manual_seed(0)
    J = torch.randn(N, T, P, generator=g, dtype=torch.float64)
    G = J @ J.transpose(1, 2)
    G = (G + G.transpose(1, 2)) / 2
    order = S.random_orders(N, T, generator=g)
    target = torch.rand(N, T, T, generator=g, dtype=torch.float64) * 0.2
    lower = torch.full((N, T), 0.5 / T, dtype=torch.float64)
    return G, order, target, lower


def cases(G, order, target, lower):
    """name -> (public(backend), bare op call)."""
    ops = torch.ops.mtlk
    N, T = G.shape[0], G.shape[1]
    Greg = torch.stack([regularized_gram(g, 1e-4, 1e-4) for g in G])
    upgrad = torch.diag(torch.full((T,), 1.0 / T, dtype=torch.float64)).expand(N, T, T).contiguous()
    dualproj = torch.full((N, 1, T), 1.0 / T, dtype=torch.float64)
    return {
        "pcgrad": (lambda b: S.pcgrad_weights(G, order, backend=b), lambda: ops.pcgrad_weights(G, order)),
        "gradvac": (lambda b: S.gradvac_weights(G, order, target, 0.5, backend=b),
                    lambda: ops.gradvac_weights(G, order, target, 0.5, False)),
        "mgda": (lambda b: S.mgda_weights(G, backend=b), lambda: ops.mgda_weights(G, 250, 1e-5)),
        "min_norm": (lambda b: S.min_norm_weights(G, backend=b), lambda: ops.min_norm_weights(G)),
        "peltr": (lambda b: S.peltr_weights(G, lower, backend=b), lambda: ops.peltr_weights(G, lower)),
        "cagrad": (lambda b: S.cagrad_weights(G, 0.5, backend=b), lambda: ops.cagrad_weights(G, 0.5)),
        # UPGrad: T bound vectors per problem (one dual-cone problem per task); DualProj: one
        "dual_cone_upgrad": (lambda b: S.dual_cone_weights(Greg, upgrad, backend=b),
                             lambda: ops.dual_cone_weights(Greg, upgrad)),
        "dual_cone_dualproj": (lambda b: S.dual_cone_weights(Greg, dualproj, backend=b),
                               lambda: ops.dual_cone_weights(Greg, dualproj)),
    }


def run(reps: int, Ns: list[int], Ts: list[int]) -> None:
    torch.set_num_threads(1)
    print(f"mtlkernels T x T solvers, torch {torch.__version__}, 1 thread, medians of interleaved runs "
          f"({reps} native, fewer reference)\n")
    header = "| solver | T | N | public us | op us | reference us | reference / public |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name in ("pcgrad", "gradvac", "mgda", "min_norm", "peltr", "cagrad", "dual_cone_upgrad", "dual_cone_dualproj"):
        for N in Ns:
            for T in Ts:
                public, bare = cases(*inputs(N, T))[name]
                nat = interleaved_medians({"public": lambda: public("native"), "op": bare}, reps=reps, warmup=10)
                ref_reps = max(3, min(reps, int(2000 / (N * T * T))))
                ref = interleaved_medians({"ref": lambda: public("reference")}, reps=ref_reps, warmup=2)["ref"]
                print(f"| {name} | {T} | {N} | {nat['public'] * 1e6:.1f} | {nat['op'] * 1e6:.1f} | "
                      f"{ref * 1e6:.0f} | {ref / nat['public']:.0f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--N", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--T", type=int, nargs="+", default=[2, 4, 8, 16])
    args = parser.parse_args()
    run(args.reps, args.N, args.T)


if __name__ == "__main__":
    main()
