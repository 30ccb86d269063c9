"""The Triton kernels compile to sm_80 and sm_90 cubins without a GPU."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mtlkernels import _extension


@pytest.mark.skipif(not _extension.triton_installed(), reason="triton not installed")
def test_triton_kernels_compile_for_gpu_targets():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "mtlkernels.triton.compile_check", "--arch", "80", "90"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("ok")]
    assert len(lines) == 2 * 12, res.stdout  # (gate_mix fwd/bwd, gram, combine) x 3 dtypes x 2 archs
    assert "FAIL" not in res.stdout
    assert all("cubin 0 bytes" not in line for line in lines)
