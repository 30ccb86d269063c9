// Counter-based random keys, CUDA kernel: one thread per key, seed and draw read on the device
// (nothing comes back to the host), the math of csrc/include/mtlk/counter_keys.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "counter_keys_checks.h"
#include "mtlk/counter_keys.h"

namespace mtlk {
namespace {

constexpr int kThreads = 256;

__global__ void counter_keys_kernel(const int64_t* __restrict__ seed, const int64_t* __restrict__ draw,
                                    int64_t* __restrict__ out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = counter_key(mix63(static_cast<uint64_t>(*seed)), *draw, n, i);
}

at::Tensor counter_keys_cuda(const at::Tensor& seed, const at::Tensor& draw, int64_t n) {
  check_counter_keys_args(seed, draw, n);
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({n}, seed.options());
  if (n == 0) return out;
  const auto blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  counter_keys_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      seed.const_data_ptr<int64_t>(), draw.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CUDA, m) { m.impl("counter_keys", &counter_keys_cuda); }

}  // namespace mtlk
