"""Compiles every Triton kernel of the package to GPU code without a GPU.

    python -m mtlkernels.triton.compile_check [--arch 80 90]

Runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin via the bundled ptxas)
for each kernel, dtype and compute capability, and prints the code sizes and shared memory. Must run with TRITON_INTERPRET unset: under the interpreter kernels are not compiled.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _gate_mix_sources(ASTSource):
    from mtlkernels.triton import gate_mix as gm

    for dtype, acc in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        constexprs = {"HAS_MASK": True, "ACC": gm.tl.float64 if acc == "fp64" else gm.tl.float32,
                      "BLOCK_T": 4, "BLOCK_X": 16, "BLOCK_D": 128}
        i32 = {name: "i32" for name in ("T", "X", "D")}
        fwd_strides = {f"s_{a}": "i64" for a in ("eb", "ex", "ed", "lb", "lt", "lx")}
        yield f"gate_mix_fwd[{dtype}]", ASTSource(
            fn=gm._gate_mix_fwd_kernel,
            signature={"e_ptr": f"*{dtype}", "l_ptr": f"*{dtype}", "m_ptr": "*i1", "o_ptr": f"*{dtype}",
                       "p_ptr": f"*{dtype}", **i32, **fwd_strides,
                       "HAS_MASK": "constexpr", "WRITE_P": "constexpr", "ACC": "constexpr",
                       "BLOCK_T": "constexpr", "BLOCK_X": "constexpr", "BLOCK_D": "constexpr"},
            constexprs={**constexprs, "WRITE_P": True})
        bwd_strides = {f"s_{a}": "i64" for a in ("gb", "gt", "gd", "pb", "pt", "px", "eb", "ex", "ed",
                                                 "lb", "lt", "lx")}
        yield f"gate_mix_bwd[{dtype}]", ASTSource(
            fn=gm._gate_mix_bwd_kernel,
            signature={"g_ptr": f"*{dtype}", "gp_ptr": f"*{dtype}", "e_ptr": f"*{dtype}", "l_ptr": f"*{dtype}",
                       "m_ptr": "*i1", "de_ptr": f"*{dtype}", "dl_ptr": f"*{dtype}", **i32, **bwd_strides,
                       "HAS_MASK": "constexpr", "HAS_GP": "constexpr", "ACC": "constexpr",
                       "BLOCK_T": "constexpr", "BLOCK_X": "constexpr", "BLOCK_D": "constexpr"},
            constexprs={**constexprs, "HAS_GP": True})


def _gram_sources(ASTSource):
    from mtlkernels.triton import gram as g

    for dtype, acc in (("fp32", g.tl.float32), ("bf16", g.tl.float32), ("fp64", g.tl.float64)):
        yield f"gram[{dtype}]", ASTSource(
            fn=g._gram_kernel,
            signature={"x_ptr": f"*{dtype}", "g_ptr": "*fp64", "T": "i32", "n": "i64", "ld": "i64",
                       "ACC": "constexpr", "BLOCK_T": "constexpr", "BLOCK_P": "constexpr", "TILES": "constexpr"},
            constexprs={"ACC": acc, "BLOCK_T": 16, "BLOCK_P": 128, "TILES": 8})
        yield f"combine[{dtype}]", ASTSource(
            fn=g._combine_kernel,
            signature={"x_ptr": f"*{dtype}", "w_ptr": "*fp64", "out_ptr": f"*{dtype}", "T": "i32", "n": "i64",
                       "ld": "i64", "ACCUMULATE": "constexpr", "ACC": "constexpr", "BLOCK_P": "constexpr"},
            constexprs={"ACCUMULATE": True, "ACC": acc, "BLOCK_P": 1024})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET; the interpreter does not compile kernels", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = 0
    for arch in args.arch:
        for name, src in [*_gate_mix_sources(ASTSource), *_gram_sources(ASTSource)]:
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
            except Exception as exc:  # report every kernel, then fail
                failures += 1
                print(f"FAIL sm_{arch} {name}: {type(exc).__name__}: {exc}")
                continue
            ptx = compiled.asm.get("ptx", "")
            cubin = compiled.asm.get("cubin", b"")
            print(f"ok   sm_{arch} {name}: ptx {len(ptx)} chars, cubin {len(cubin)} bytes, "
                  f"shared memory {compiled.metadata.shared} B")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
