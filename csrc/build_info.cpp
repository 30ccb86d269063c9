// The pybind11 surface of mtlkernels._C: facts about how this binary was built, read by
// mtlkernels.build_info(). Importing the module also runs the static op registrations of
// every kernel file linked into it.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include <string>

#include "grouped_mlp.h"

#ifndef MTLK_VERSION
#define MTLK_VERSION "unknown"
#endif
#ifndef MTLK_CPU_ISA
#define MTLK_CPU_ISA "default"
#endif

namespace {

// Whether the CPU running this process has the instructions the kernels were compiled for.
bool cpu_supports_compiled_isa() {
  const std::string isa = MTLK_CPU_ISA;
#if defined(__x86_64__) || defined(__i386__)
  if (isa == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  }
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "default";
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
         std::to_string(__GNUC_PATCHLEVEL__);
#else
  return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mtlkernels compiled kernels (ops are registered under torch.ops.mtlk)";
  m.attr("version") = MTLK_VERSION;
  m.attr("cpu_isa") = MTLK_CPU_ISA;
  m.attr("compiler") = compiler();
#ifdef MTLK_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
  m.def("cpu_supports_compiled_isa", &cpu_supports_compiled_isa,
        "True when this CPU has the instruction set the kernels were compiled for");
  m.def("cpu_float_products", &mtlk::cpu::float_products_library,
        "The library grouped_mlp runs float32 CPU products on: onednn or mkl (csrc/cpu/matmul.cpp)");
  m.def("parallel_info", &at::get_parallel_info, "ATen's thread and OpenMP configuration");
  m.def("num_threads", &at::get_num_threads, "intra-op threads at::parallel_for will use");
}
