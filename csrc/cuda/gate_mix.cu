// Gate mixture, CUDA kernels. Same math as csrc/cpu/gate_mix.cpp; the per-row softmax
// and its backward come from csrc/include/mtlk/gate_mix.h, which the CPU tests cover.
//
// Forward: one block per (batch row, tile of D); the T softmax rows go to shared memory,
// then each thread owns one column d and accumulates up to kTaskChunk tasks at a time.
// Backward: one block per batch row; threads stride over D, write dE directly and reduce
// dp[t, x] = <g[t, :], E[x, :]> through warp shuffles into shared memory.
//
// Logit values (NaN, fully masked rows) are validated by the Python front end before
// launch; a bad row that reaches the kernel produces zeros, never NaN.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "gate_mix_checks.h"
#include "mtlk/gate_mix.h"

namespace mtlk {
namespace {

constexpr int kForwardThreads = 128;
constexpr int kBackwardThreads = 256;
constexpr int kTaskChunk = 8;

template <typename scalar_t, typename acc_t>
__global__ void gate_mix_forward_kernel(const scalar_t* __restrict__ E, const scalar_t* __restrict__ L,
                                        const bool* __restrict__ M, scalar_t* __restrict__ O,
                                        scalar_t* __restrict__ P, int64_t T, int64_t X, int64_t D) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* p = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t b = blockIdx.x;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    masked_softmax_row(L + (b * T + t) * X, M ? M + t * X : nullptr, X, p + t * X);
  }
  __syncthreads();
  if (P != nullptr && blockIdx.y == 0) {
    for (int64_t i = threadIdx.x; i < T * X; i += blockDim.x) P[b * T * X + i] = static_cast<scalar_t>(p[i]);
  }
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const scalar_t* Eb = E + b * X * D + d;
  for (int64_t t0 = 0; t0 < T; t0 += kTaskChunk) {
    const int64_t nt = T - t0 < kTaskChunk ? T - t0 : kTaskChunk;
    acc_t acc[kTaskChunk];
#pragma unroll
    for (int j = 0; j < kTaskChunk; ++j) acc[j] = acc_t(0);
    for (int64_t x = 0; x < X; ++x) {
      const acc_t e = static_cast<acc_t>(Eb[x * D]);
#pragma unroll
      for (int j = 0; j < kTaskChunk; ++j) {
        if (j < nt) acc[j] += p[(t0 + j) * X + x] * e;
      }
    }
#pragma unroll
    for (int j = 0; j < kTaskChunk; ++j) {
      if (j < nt) O[(b * T + t0 + j) * D + d] = static_cast<scalar_t>(acc[j]);
    }
  }
}

template <typename acc_t>
__device__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void gate_mix_backward_kernel(const scalar_t* __restrict__ G, const scalar_t* __restrict__ GP,
                                         const scalar_t* __restrict__ E, const scalar_t* __restrict__ L,
                                         const bool* __restrict__ M, scalar_t* __restrict__ dE,
                                         scalar_t* __restrict__ dL, int64_t T, int64_t X, int64_t D) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* p = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* dp = p + T * X;
  acc_t* gp = dp + T * X;  // only used when GP != nullptr
  const int64_t b = blockIdx.x;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    masked_softmax_row(L + (b * T + t) * X, M ? M + t * X : nullptr, X, p + t * X);
  }
  for (int64_t i = threadIdx.x; i < T * X; i += blockDim.x) {
    dp[i] = acc_t(0);
    if (GP != nullptr) gp[i] = static_cast<acc_t>(GP[b * T * X + i]);
  }
  __syncthreads();

  const scalar_t* Gb = G + b * T * D;
  const scalar_t* Eb = E + b * X * D;
  for (int64_t x = 0; x < X; ++x) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      acc_t acc = acc_t(0);
      for (int64_t t = 0; t < T; ++t) acc += p[t * X + x] * static_cast<acc_t>(Gb[t * D + d]);
      dE[b * X * D + x * D + d] = static_cast<scalar_t>(acc);
    }
  }
  const int lane = threadIdx.x % 32;
  for (int64_t tx = 0; tx < T * X; ++tx) {
    const int64_t t = tx / X, x = tx % X;
    acc_t part = acc_t(0);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      part += static_cast<acc_t>(Gb[t * D + d]) * static_cast<acc_t>(Eb[x * D + d]);
    }
    part = warp_sum(part);
    if (lane == 0) atomicAdd(dp + tx, part);
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    softmax_backward_row(p + t * X, dp + t * X, GP != nullptr ? gp + t * X : nullptr, X,
                         dL + (b * T + t) * X);
  }
}

size_t checked_smem(size_t bytes) {
  TORCH_CHECK_VALUE(bytes <= 48 * 1024, "gate_mix (CUDA): T * X = ", bytes,
                    " bytes of per-row gate state exceed the 48 KiB shared-memory budget");
  return bytes;
}

std::tuple<at::Tensor, at::Tensor> gate_mix_cuda(const at::Tensor& experts_in, const at::Tensor& logits_in,
                                                 const std::optional<at::Tensor>& expert_mask,
                                                 bool return_probs) {
  check_gate_mix_args(experts_in, logits_in, expert_mask);
  const c10::cuda::CUDAGuard guard(experts_in.device());
  const at::Tensor experts = experts_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor mask = expert_mask.has_value() ? expert_mask->contiguous() : at::Tensor();
  const int64_t B = experts.size(0), X = experts.size(1), D = experts.size(2), T = logits.size(1);
  at::Tensor out = at::empty({B, T, D}, experts.options());
  at::Tensor probs = at::empty({return_probs ? B : 0, T, X}, logits.options());
  if (B == 0 || T == 0 || D == 0) return {out, probs};
  TORCH_CHECK_VALUE(X > 0, "gate_mix: experts has X = 0 experts to mix");
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>((D + kForwardThreads - 1) / kForwardThreads));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, experts.scalar_type(), "gate_mix_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = checked_smem(sizeof(acc_t) * T * X);
    gate_mix_forward_kernel<scalar_t, acc_t><<<grid, kForwardThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        experts.const_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(),
        mask.defined() ? mask.const_data_ptr<bool>() : nullptr, out.mutable_data_ptr<scalar_t>(),
        return_probs ? probs.mutable_data_ptr<scalar_t>() : nullptr, T, X, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, probs};
}

std::tuple<at::Tensor, at::Tensor> gate_mix_backward_cuda(
    const at::Tensor& grad_out_in, const std::optional<at::Tensor>& grad_probs_in, const at::Tensor& experts_in,
    const at::Tensor& logits_in, const std::optional<at::Tensor>& expert_mask) {
  check_gate_mix_backward_args(grad_out_in, grad_probs_in, experts_in, logits_in, expert_mask);
  const c10::cuda::CUDAGuard guard(experts_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor grad_probs = grad_probs_in.has_value() ? grad_probs_in->contiguous() : at::Tensor();
  const at::Tensor experts = experts_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor mask = expert_mask.has_value() ? expert_mask->contiguous() : at::Tensor();
  const int64_t B = experts.size(0), X = experts.size(1), D = experts.size(2), T = logits.size(1);
  const bool tasks = grad_out.dim() == 4;  // N task gradients at once: one launch per task
  const int64_t N = tasks ? grad_out.size(0) : 1;
  at::Tensor grad_experts = tasks ? at::empty({N, B, X, D}, experts.options()) : at::empty({B, X, D}, experts.options());
  at::Tensor grad_logits = tasks ? at::empty({N, B, T, X}, logits.options()) : at::empty({B, T, X}, logits.options());
  if (B == 0 || N == 0) return {grad_experts, grad_logits};
  if (T == 0) return {grad_experts.zero_(), grad_logits};
  TORCH_CHECK_VALUE(X > 0, "gate_mix_backward: experts has X = 0 experts to mix");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, experts.scalar_type(), "gate_mix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = checked_smem(sizeof(acc_t) * T * X * (grad_probs.defined() ? 3 : 2));
    for (int64_t k = 0; k < N; ++k) {
      gate_mix_backward_kernel<scalar_t, acc_t>
          <<<static_cast<unsigned>(B), kBackwardThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
              grad_out.const_data_ptr<scalar_t>() + k * B * T * D,
              grad_probs.defined() ? grad_probs.const_data_ptr<scalar_t>() + k * B * T * X : nullptr,
              experts.const_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(),
              mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
              grad_experts.mutable_data_ptr<scalar_t>() + k * B * X * D,
              grad_logits.mutable_data_ptr<scalar_t>() + k * B * T * X, T, X, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_experts, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CUDA, m) {
  m.impl("gate_mix", &gate_mix_cuda);
  m.impl("gate_mix_backward", &gate_mix_backward_cuda);
}

}  // namespace mtlk
