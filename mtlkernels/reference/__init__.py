"""Plain-PyTorch oracles for every op and method: the truth that tests and benchmarks compare to."""
from mtlkernels.reference.gate_mix import gate_mix

__all__ = ["gate_mix"]
