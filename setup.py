"""Build of record for mtlkernels: one extension, mtlkernels._C, from csrc/.

Install with:  MAX_JOBS=2 pip install -e . --no-build-isolation
(without --no-build-isolation pip builds against a freshly downloaded torch, see README).

Environment knobs
- MTLK_CPU_ISA = auto | avx512 | avx2 | default. The instruction set the CPU kernels are
  compiled for. `auto` (the default) picks the best of the three that the build machine has;
  build a redistributable wheel with `avx2` or `default`. At import the package checks that
  the running CPU has what the binary needs and falls back to the reference otherwise.
- MTLK_NO_CUDA=1 builds CPU kernels only even when torch has CUDA and nvcc is present.
- TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0" (sm_80, sm_90) for CUDA builds without a GPU.
"""
import glob
import os
import platform
import re

# cpp_extension reads these at import time (BUILD-NOTES P6, P8).
if os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

try:
    import torch  # noqa: E402
except ImportError:
    raise SystemExit("mtlkernels compiles against the torch of the environment it is installed into: "
                     "pip install torch==2.13.0 (or your CUDA build), then pip install --no-build-isolation .")
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "pyproject.toml")) as f:
    VERSION = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)

ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": [],
}


def build_machine_isa():
    """The best ISA level in ISA_FLAGS that the build machine's CPU supports."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "default"
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return "default"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "default"


def cpu_isa():
    isa = os.environ.get("MTLK_CPU_ISA", "auto").lower()
    if isa == "auto":
        return build_machine_isa()
    if isa not in ISA_FLAGS:
        raise SystemExit(f"MTLK_CPU_ISA={isa!r}: expected one of auto, {', '.join(ISA_FLAGS)}")
    return isa


def with_cuda():
    if os.environ.get("MTLK_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None and os.path.exists(
        os.path.join(CUDA_HOME, "bin", "nvcc"))


def extension():
    isa = cpu_isa()
    cuda = with_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    defines = [f'-DMTLK_VERSION="{VERSION}"', f'-DMTLK_CPU_ISA="{isa}"']
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-unknown-pragmas", *ISA_FLAGS[isa], *defines]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    print(f"[mtlkernels] torch {torch.__version__}, cuda={cuda}, cpu_isa={isa}, CUDA_HOME={CUDA_HOME}")
    if cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        return CUDAExtension(
            "mtlkernels._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DMTLK_WITH_CUDA"],
                                "nvcc": ["-O3", "-lineinfo", "-DMTLK_WITH_CUDA", *defines]},
            extra_link_args=["-fopenmp"])
    return CppExtension("mtlkernels._C", sources, include_dirs=include_dirs,
                        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    packages=find_packages(include=["mtlkernels", "mtlkernels.*"]),
    package_data={"mtlkernels.data": ["census/*.gz", "census/README.md"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
