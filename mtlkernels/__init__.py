"""mtlkernels: fused kernels, models, balancing methods and metrics for multi-task
learning in recommender ranking.

The compiled extension ``mtlkernels._C`` is optional at run time: when it is missing or
cannot run on this CPU the package still imports, says why once (a RuntimeWarning), and
every op runs on its plain-PyTorch reference. ``build_info()`` tells what is available.
"""
from mtlkernels._extension import build_info
from mtlkernels import balance, metrics, nn, ops, reference

__version__ = build_info()["version"]

__all__ = ["balance", "build_info", "metrics", "nn", "ops", "reference", "__version__"]
