"""Public op families. Each picks a backend (argument, MTLK_BACKEND, auto) and runs it."""
from mtlkernels.ops.gate_mix import gate_mix

__all__ = ["gate_mix"]
