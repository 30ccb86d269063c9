"""Loads the compiled extension ``mtlkernels._C`` and records why it is unusable if it is."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings

import torch

_C = None
LOAD_ERROR: str | None = None

try:
    from mtlkernels import _C as _compiled
except ImportError as exc:  # not built, or built against another torch
    LOAD_ERROR = (f"mtlkernels._C could not be imported ({exc}); every op runs on the "
                  "reference backend. Build it with `pip install -e . --no-build-isolation`.")
else:
    if _compiled.cpu_supports_compiled_isa():
        _C = _compiled
    else:
        LOAD_ERROR = (f"mtlkernels._C was compiled for the {_compiled.cpu_isa} instruction set, "
                      "which this CPU lacks; every op runs on the reference backend. Rebuild with "
                      "MTLK_CPU_ISA=avx2 or MTLK_CPU_ISA=default.")

if LOAD_ERROR is not None and os.environ.get("MTLK_QUIET_FALLBACK") != "1":
    warnings.warn(LOAD_ERROR, RuntimeWarning, stacklevel=2)


def native_available() -> bool:
    """True when the compiled kernels are loaded and runnable on this CPU."""
    return _C is not None


def native_has_kernel(op: str, device_type: str) -> bool:
    """True when ``torch.ops.mtlk.<op>`` has a compiled kernel for ``device_type`` ("cpu"/"cuda")."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mtlk::{op}", device_type.upper())


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _package_version() -> str:
    if _C is not None:
        return _C.version
    try:
        return importlib.metadata.version("mtlkernels")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_info() -> dict:
    """How this installation was built and what it can run.

    Keys: ``version``; ``native`` (compiled kernels usable); ``load_error`` (why not, or None);
    ``backends`` (the compiled dispatch keys, e.g. ``["cpu"]`` or ``["cpu", "cuda"]``);
    ``cpu_isa`` (instruction set of the CPU kernels: avx512, avx2 or default); ``compiler``;
    ``openmp`` (built with OpenMP); ``num_threads`` (intra-op threads); ``cpu_float_products``
    (the library ``grouped_mlp`` runs float32 CPU products on: ``"onednn"`` on non-Intel CPUs,
    where it is faster than MKL, else ``"mkl"``; ``torch.backends.mkldnn.enabled = False``
    selects MKL); ``triton`` (importable); ``torch`` (the running torch version).
    """
    info = {
        "version": _package_version(),
        "native": _C is not None,
        "load_error": LOAD_ERROR,
        "backends": [],
        "cpu_isa": None,
        "compiler": None,
        "openmp": None,
        "num_threads": torch.get_num_threads(),
        "cpu_float_products": None,
        "triton": triton_installed(),
        "torch": torch.__version__,
    }
    if _C is not None:
        info.update(
            backends=["cpu"] + (["cuda"] if _C.with_cuda else []),
            cpu_isa=_C.cpu_isa,
            compiler=_C.compiler,
            openmp=_C.with_openmp,
            num_threads=_C.num_threads(),
            cpu_float_products=_C.cpu_float_products(),
        )
    return info
