// CPU matrix products of the grouped MLP: oneDNN where it is the faster library (else the
// driver's ATen mm/bmm, i.e. MKL).
//
// ATen runs float32 products on MKL, which selects its tuned kernels by CPU vendor: on
// non-Intel x86 it runs a generic path. oneDNN selects its JIT kernels by instruction set
// only. Measured on an AMD EPYC (Zen 4) VM, 1 thread, oneDNN against MKL: [512,256]@[256,1024]
// 103 vs 95 GFLOP/s, [1024,512]@[512,2048] 105 vs 91, bmm [8,1024,256]@[8,256,128] 94 vs 77,
// bmm [16,512,64]@[16,64,32] 105 vs 85, and a 2048^3 product 109 vs 96. So float32 products go
// to oneDNN on non-Intel CPUs and stay on MKL on Intel ones, where MKL is Intel's own tuning.
// Small products stay on MKL everywhere: a oneDNN call costs about 20 us more than an MKL one
// (primitive lookup), more than its speed saves below a few million multiply-adds (a
// two-layer tower stack at batch 1: 57 us on oneDNN, 17 us on MKL).
// bfloat16/half products already reach oneDNN through ATen.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>

#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "grouped_mlp.h"

#if defined(CPU_CAPABILITY_AVX512)
// Declared in ATen/native/mkldnn/Matmul.h (TORCH_API, not shipped with the wheel's headers):
// result = beta * result + alpha * mat1 @ mat2 for 2-D or 3-D operands, via ideep/oneDNN.
// Its float32 path requires AVX512BW/VL/DQ, which an AVX512 build of this extension already
// requires at import.
namespace at::native {
TORCH_API void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta,
                             float alpha);
}  // namespace at::native
#endif

namespace mtlk::cpu {
namespace {

bool intel_cpu() {
#if defined(__x86_64__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  return std::strcmp(vendor, "GenuineIntel") == 0;
#else
  return false;
#endif
}

bool onednn_float_products() {
#if defined(CPU_CAPABILITY_AVX512)
  static const bool faster = at::hasMKLDNN() && !intel_cpu();
  return faster && at::globalContext().userEnabledMkldnn();
#else
  return false;
#endif
}

// Multiply-adds from which oneDNN's speed outweighs its call cost (1 << 23: ~0.17 ms of work).
constexpr int64_t kOneDnnMinMacs = int64_t{1} << 23;

}  // namespace

const char* float_products_library() { return onednn_float_products() ? "onednn" : "mkl"; }

bool onednn_matmul_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
#if defined(CPU_CAPABILITY_AVX512)
  if (a.scalar_type() == at::kFloat && out.is_contiguous() && out.numel() * a.size(-1) >= kOneDnnMinMacs &&
      onednn_float_products()) {
    at::native::mkldnn_matmul(a, b, out, /*beta=*/0.0f, /*alpha=*/1.0f);
    return true;
  }
#endif
  return false;
}

}  // namespace mtlk::cpu
