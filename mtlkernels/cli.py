"""The ``mtlkernels`` command line.

    mtlkernels info    how this installation was built (backends, ISA, threads)
    mtlkernels demo    swap an expert-loop MMoE for the grouped/gate_mix one; check it is exact; time both
"""
from __future__ import annotations

import argparse
import json
import sys

import mtlkernels


def _cmd_info(args) -> int:
    print(json.dumps(mtlkernels.build_info(), indent=2))
    return 0


def _cmd_demo(args) -> int:
    from mtlkernels.demo import run_demo

    info = mtlkernels.build_info()
    print(f"mtlkernels {info['version']} | native kernels: {info['native']} ({info['cpu_isa']}) | "
          f"torch {info['torch']}")
    if not info["native"]:
        print(f"note: {info['load_error']}")
    r = run_demo(batch=args.batch, num_experts=args.experts, num_tasks=args.tasks, expert_dim=args.expert_dim,
                 in_features=args.in_features, reps=args.reps, threads=args.threads)
    s = r["shape"]
    print(f"MMoE: batch {s['batch']}, {s['in_features']} inputs, {s['experts']} experts of width "
          f"{s['expert_dim']}, {s['tasks']} tasks, {s['threads']} thread(s), forward+backward, "
          f"median of {args.reps}")
    print(f"  swap is exact: max |output diff| {r['max_abs_diff_output']:.2e}, "
          f"max |grad diff| {r['max_abs_diff_grads']:.2e}")
    print(f"  gate mixture alone : loop {r['mixture_loop_ms']:8.3f} ms | gate_mix {r['mixture_kernel_ms']:8.3f} ms "
          f"| {r['mixture_loop_ms'] / r['mixture_kernel_ms']:.2f}x")
    print(f"  whole layer+towers : loop {r['layer_loop_ms']:8.3f} ms | swapped  {r['layer_swapped_ms']:8.3f} ms "
          f"| {r['layer_loop_ms'] / r['layer_swapped_ms']:.2f}x  (grouped experts + gate_mix, same weights)")
    ok = r["max_abs_diff_output"] < 1e-4 and r["max_abs_diff_grads"] < 1e-3
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mtlkernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print build information").set_defaults(fn=_cmd_info)
    demo = sub.add_parser("demo", help="swap an expert-loop MMoE for the fused one and time it")
    demo.add_argument("--batch", type=int, default=4096)
    demo.add_argument("--in-features", type=int, default=128)
    demo.add_argument("--expert-dim", type=int, default=128)
    demo.add_argument("--experts", type=int, default=8)
    demo.add_argument("--tasks", type=int, default=4)
    demo.add_argument("--threads", type=int, default=1)
    demo.add_argument("--reps", type=int, default=20)
    demo.set_defaults(fn=_cmd_demo)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
