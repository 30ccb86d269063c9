"""The extension's build-info surface, and the package working without it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mtlkernels
from mtlkernels import _extension


def test_build_info_reports_the_build():
    info = mtlkernels.build_info()
    assert set(info) >= {"version", "native", "load_error", "backends", "cpu_isa", "compiler", "openmp",
                         "num_threads", "cpu_float_products", "triton", "torch"}
    assert info["version"] == mtlkernels.__version__
    if info["native"]:
        assert info["load_error"] is None
        assert info["backends"][0] == "cpu"
        assert info["cpu_isa"] in ("avx512", "avx2", "default")
        assert info["openmp"] is True, "built without -fopenmp: at::parallel_for would run on one thread"
        assert info["num_threads"] >= 1
    else:
        assert info["load_error"]


@pytest.mark.skipif(os.environ.get("CI") != "true" and not _extension.native_available(),
                    reason="extension not built here")
def test_extension_is_built_in_ci():
    """CI builds _C; a silent fallback to the reference there would hide a broken build."""
    assert _extension.native_available(), _extension.LOAD_ERROR


def test_package_imports_and_works_without_the_extension():
    code = """
import sys, warnings
sys.modules['mtlkernels._C'] = None  # makes `from mtlkernels import _C` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import mtlkernels
import torch
from mtlkernels.ops import gate_mix
info = mtlkernels.build_info()
assert not info['native'] and 'could not be imported' in info['load_error'], info
assert any('reference backend' in str(w.message) for w in caught), [str(w.message) for w in caught]
e, l = torch.randn(3, 2, 4), torch.randn(3, 2, 2)
torch.testing.assert_close(gate_mix(e, l), torch.softmax(l, -1) @ e)
try:
    gate_mix(e, l, backend='native')
except ValueError as exc:
    assert 'not usable here' in str(exc)
else:
    raise AssertionError('native backend accepted without _C')
print('ok')
"""
    env = {k: v for k, v in os.environ.items() if k not in ("MTLK_BACKEND", "MTLK_QUIET_FALLBACK")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
