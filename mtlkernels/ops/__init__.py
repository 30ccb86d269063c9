"""Public op families. Each picks a backend (argument, MTLK_BACKEND, auto) and runs it."""
from mtlkernels.ops.gate_mix import gate_mix
from mtlkernels.ops import solvers
from mtlkernels.ops.gram import block_grams, combine_, gram
from mtlkernels.ops.grouped_mlp import grouped_mlp

__all__ = ["block_grams", "combine_", "gate_mix", "gram", "grouped_mlp", "solvers"]
