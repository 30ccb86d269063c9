"""Test session setup. The Triton interpreter must be switched on before anything imports
triton (BUILD-NOTES P10), so it is set here, at collection time, before mtlkernels loads."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import mtlkernels  # noqa: E402


def pytest_report_header(config):
    info = mtlkernels.build_info()
    return (f"mtlkernels {info['version']}: native={info['native']} backends={info['backends']} "
            f"cpu_isa={info['cpu_isa']} openmp={info['openmp']} threads={info['num_threads']} "
            f"triton={info['triton']} torch={info['torch']}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
