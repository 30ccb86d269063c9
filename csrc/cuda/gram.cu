// Per-task gradient algebra on CUDA (same contract as csrc/cpu/gram.cpp).
//
// gram: one block per chunk of kGramChunk elements of a parameter block; the chunk's T rows are
// staged tile by tile in shared memory AS DOUBLE, each thread owns some (i, j >= i) pairs and
// sums their tile products in double, and the chunk partials are atomically added into the
// float64 G (no host synchronisation). The tile math lives in mtlk/gram_tiles.h, which the C++
// tests run on the host. combine_: one thread per element of P.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "gram_checks.h"
#include "mtlk/gram_tiles.h"

namespace mtlk {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPairsPerThread = 8;

template <typename scalar_t>
__global__ void gram_kernel(const scalar_t* __restrict__ rows, int64_t ld, int64_t T, int64_t n,
                            double* __restrict__ G) {
  extern __shared__ double tile[];  // [T][kGramTile]
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * kGramChunk;
  const int64_t hi = lo + kGramChunk < n ? lo + kGramChunk : n;
  const int64_t pairs = gram_pairs(T);
  double acc[kMaxPairsPerThread];
#pragma unroll
  for (int q = 0; q < kMaxPairsPerThread; ++q) acc[q] = 0.0;
  for (int64_t p0 = lo; p0 < hi; p0 += kGramTile) {
    const int64_t len = hi - p0 < kGramTile ? hi - p0 : kGramTile;
    for (int64_t e = threadIdx.x; e < T * kGramTile; e += blockDim.x) {
      const int64_t t = e / kGramTile, p = e % kGramTile;
      tile[e] = p < len ? static_cast<double>(rows[t * ld + p0 + p]) : 0.0;
    }
    __syncthreads();
    for (int q = 0; q < kMaxPairsPerThread; ++q) {
      const int64_t pair = threadIdx.x + static_cast<int64_t>(q) * blockDim.x;
      if (pair >= pairs) break;
      int64_t i, j;
      gram_pair(pair, T, &i, &j);
      acc[q] += gram_tile_dot(tile, i, j);
    }
    __syncthreads();
  }
  for (int q = 0; q < kMaxPairsPerThread; ++q) {
    const int64_t pair = threadIdx.x + static_cast<int64_t>(q) * blockDim.x;
    if (pair >= pairs) break;
    int64_t i, j;
    gram_pair(pair, T, &i, &j);
    atomicAdd(G + i * T + j, acc[q]);
    if (i != j) atomicAdd(G + j * T + i, acc[q]);
  }
}

template <typename scalar_t>
__global__ void combine_kernel(const scalar_t* __restrict__ rows, int64_t ld, const double* __restrict__ w,
                               int64_t T, int64_t n, scalar_t* __restrict__ out, bool accumulate) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= n) return;
  double acc = accumulate ? static_cast<double>(out[p]) : 0.0;
  for (int64_t t = 0; t < T; ++t) acc += w[t] * static_cast<double>(rows[t * ld + p]);
  out[p] = static_cast<scalar_t>(acc);
}

void accumulate_block_gram(const at::Tensor& block, double* G, int64_t T) {
  TORCH_CHECK_VALUE(T * (T + 1) / 2 <= static_cast<int64_t>(kThreads) * kMaxPairsPerThread,
                    "gram (CUDA): T = ", T, " tasks exceeds the kernel's limit");
  const at::Tensor rows = block.contiguous().view({block.size(0), -1});
  const int64_t n = rows.size(1);
  if (n == 0) return;
  const unsigned grid = static_cast<unsigned>((n + kGramChunk - 1) / kGramChunk);
  const size_t smem = sizeof(double) * T * kGramTile;  // at most 63 tasks: 32 KiB
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "gram_cuda", [&] {
    gram_kernel<scalar_t><<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        rows.const_data_ptr<scalar_t>(), rows.stride(0), T, n, G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor gram_cuda(at::TensorList blocks) {
  const int64_t T = check_blocks(blocks, "gram");
  const c10::cuda::CUDAGuard guard(blocks[0].device());
  at::Tensor G = at::zeros({T, T}, blocks[0].options().dtype(at::kDouble));
  for (const at::Tensor& b : blocks) accumulate_block_gram(b, G.mutable_data_ptr<double>(), T);
  return G;
}

at::Tensor block_grams_cuda(at::TensorList blocks) {
  const int64_t T = check_blocks(blocks, "block_grams");
  const c10::cuda::CUDAGuard guard(blocks[0].device());
  const int64_t K = static_cast<int64_t>(blocks.size());
  at::Tensor G = at::zeros({K, T, T}, blocks[0].options().dtype(at::kDouble));
  for (int64_t k = 0; k < K; ++k) accumulate_block_gram(blocks[k], G.mutable_data_ptr<double>() + k * T * T, T);
  return G;
}

void combine_cuda(at::TensorList blocks, const at::Tensor& weights, at::TensorList out, bool accumulate) {
  const int64_t T = check_combine(blocks, weights, out);
  const c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor w = weights.to(blocks[0].device(), at::kDouble).contiguous();
  for (size_t k = 0; k < blocks.size(); ++k) {
    at::Tensor target = out[k];
    TORCH_CHECK_VALUE(target.is_contiguous(), "combine_: out[", k, "] must be contiguous (a parameter's .grad)");
    const at::Tensor rows = blocks[k].to(target.scalar_type()).contiguous().view({T, -1});
    const int64_t n = rows.size(1);
    if (n == 0) continue;
    const unsigned grid = static_cast<unsigned>((n + kThreads - 1) / kThreads);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, target.scalar_type(), "combine_cuda", [&] {
      combine_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          rows.const_data_ptr<scalar_t>(), rows.stride(0), w.const_data_ptr<double>(), T, n,
          target.mutable_data_ptr<scalar_t>(), accumulate);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CUDA, m) {
  m.impl("gram", &gram_cuda);
  m.impl("block_grams", &block_grams_cuda);
  m.impl("combine_", &combine_cuda);
}

}  // namespace mtlk
