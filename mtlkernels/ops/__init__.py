"""Public op families. Each picks a backend (argument, MTLK_BACKEND, auto) and runs it."""
from mtlkernels.ops.gate_mix import gate_mix
from mtlkernels.ops import solvers
from mtlkernels.ops.gram import block_grams, combine_, gram

__all__ = ["block_grams", "combine_", "gate_mix", "gram", "solvers"]
