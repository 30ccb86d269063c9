"""Backend choice for every op family (DESIGN.md, "The op families").

Order: the ``backend=`` argument, else the ``MTLK_BACKEND`` environment variable, else auto.
Auto: a CUDA tensor goes to the compiled CUDA kernel, else Triton, else the reference; a
CPU tensor goes to the compiled C++ kernel, else the reference. Triton on CPU tensors runs
only under the interpreter (``TRITON_INTERPRET=1``, set before triton is imported): that is
the test path, never chosen automatically.
"""
from __future__ import annotations

import functools
import os

import torch

from mtlkernels import _extension

BACKENDS = ("reference", "native", "triton")


def _triton_usable(device: torch.device) -> bool:
    if not _extension.triton_installed():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _why_unusable(op: str, backend: str, device: torch.device) -> str | None:
    if backend == "native":
        if not _extension.native_available():
            return _extension.LOAD_ERROR
        if not _extension.native_has_kernel(op, device.type):
            return f"mtlkernels._C has no {device.type} kernel for {op}"
    elif backend == "triton" and not _triton_usable(device):
        if not _extension.triton_installed():
            return "triton is not installed"
        return (f"triton needs a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors; "
                f"got a {device.type} tensor")
    return None


def resolve(op: str, backend: str | None, device: torch.device, *, has_triton: bool = True) -> str:
    """The backend that will run ``op`` on ``device``; raises ValueError if the requested one can't.

    ``has_triton=False`` for an op family without a Triton version: auto never picks Triton, an
    explicit ``backend="triton"`` is an error, and a global ``MTLK_BACKEND=triton`` means auto
    for that family. Under ``torch.compile`` the choice is made once, at trace time, and is a
    constant of the graph.
    """
    return _resolve(op, backend, device.type, has_triton)


@torch.compiler.assume_constant_result
def _resolve(op: str, backend: str | None, device_type: str, has_triton: bool) -> str:
    return _resolve_cached(op, backend, device_type, has_triton, os.environ.get("MTLK_BACKEND", "auto"),
                           os.environ.get("TRITON_INTERPRET"))


@functools.lru_cache(maxsize=None)
def _resolve_cached(op: str, backend: str | None, device_type: str, has_triton: bool, env_backend: str,
                    triton_interpret: str | None) -> str:
    """The choice depends only on its arguments, the two environment variables (passed in, so a
    change is seen) and what is installed, which is fixed per process: cached, since a model
    step asks several times per op call."""
    device = torch.device(device_type)
    requested = backend if backend is not None else env_backend
    source = "backend" if backend is not None else "MTLK_BACKEND"
    if requested == "triton" and not has_triton:
        if backend is not None:
            raise ValueError(f"{op}: backend='triton' is not available for this op family; "
                             "use 'native' or 'reference'")
        requested = "auto"
    if requested == "auto":
        if device.type == "cuda" and has_triton:
            order = ("native", "triton", "reference")
        else:
            order = ("native", "reference")
        return next(b for b in order if _why_unusable(op, b, device) is None)
    if requested not in BACKENDS:
        raise ValueError(f"{op}: {source}={requested!r}; expected one of auto, {', '.join(BACKENDS)}")
    why = _why_unusable(op, requested, device)
    if why is not None:
        raise ValueError(f"{op}: {source}={requested!r} is not usable here: {why}")
    return requested
