// T x T solvers, CUDA kernels: one thread per problem runs the shared per-problem math of
// csrc/include/mtlk/solvers.h (covered by the CPU tests and ctests), so the GPU computes what
// the CPU kernel computes, in the same order.
//
// Scratch lives in one device workspace of N * scratch(T) doubles (thread n owns its slice),
// so there is no cap on T and no stack-size surprise for PE-LTR's 2 T^2 doubles. The problems
// are tiny and sequential; the batch N gives the parallelism.
//
// No host synchronisation: a problem with bad values (NaN or Inf in gram, an order row that
// is not a permutation, a target outside [-1, 1], infeasible lower bounds) gets NaN weights
// (and unchanged targets) instead of an exception.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "mtlk/solvers.h"
#include "solvers_checks.h"

namespace mtlk {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ int64_t problem_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ void mark_bad(int status, double* w, int64_t T) {
  if (status == kSolverOk) return;
  for (int64_t k = 0; k < T; ++k) w[k] = static_cast<double>(NAN);
}

__global__ void pcgrad_kernel(const double* __restrict__ G, const int64_t* __restrict__ O,
                              double* __restrict__ W, double* __restrict__ scratch, int64_t N, int64_t T) {
  const int64_t n = problem_index();
  if (n >= N) return;
  const int64_t T2 = T * T;
  double* w = W + n * T;
  mark_bad(pcgrad_solve(G + n * T2, O + n * T2, T, w, scratch + n * pcgrad_scratch(T)), w, T);
}

__global__ void gradvac_kernel(const double* __restrict__ G, const int64_t* __restrict__ O,
                               double* __restrict__ P, double beta, bool every_pair, double* __restrict__ W,
                               double* __restrict__ scratch, int64_t N, int64_t T) {
  const int64_t n = problem_index();
  if (n >= N) return;
  const int64_t T2 = T * T;
  double* w = W + n * T;
  mark_bad(gradvac_solve(G + n * T2, O + n * T2, P + n * T2, beta, every_pair, T, w,
                         scratch + n * gradvac_scratch(T)),
           w, T);
}

__global__ void mgda_kernel(const double* __restrict__ G, int64_t max_iter, double tol, double* __restrict__ W,
                            double* __restrict__ scratch, int64_t N, int64_t T) {
  const int64_t n = problem_index();
  if (n >= N) return;
  double* w = W + n * T;
  mark_bad(mgda_solve(G + n * T * T, T, max_iter, tol, w, scratch + n * mgda_scratch(T)), w, T);
}

__global__ void min_norm_kernel(const double* __restrict__ G, double* __restrict__ W, double* __restrict__ scratch,
                                int64_t N, int64_t T) {
  const int64_t n = problem_index();
  if (n >= N) return;
  double* w = W + n * T;
  mark_bad(min_norm_solve(G + n * T * T, T, w, scratch + n * min_norm_scratch(T)), w, T);
}

__global__ void peltr_kernel(const double* __restrict__ G, const double* __restrict__ C, double* __restrict__ W,
                             double* __restrict__ scratch, int64_t N, int64_t T) {
  const int64_t n = problem_index();
  if (n >= N) return;
  double* w = W + n * T;
  mark_bad(peltr_solve(G + n * T * T, C + n * T, T, w, scratch + n * peltr_scratch(T)), w, T);
}

unsigned blocks_for(int64_t N) { return static_cast<unsigned>((N + kThreads - 1) / kThreads); }

at::Tensor workspace(const at::Tensor& gram, int64_t per_problem) {
  return at::empty({gram.size(0) * per_problem}, gram.options());
}

at::Tensor pcgrad_weights_cuda(const at::Tensor& gram_in, const at::Tensor& order_in) {
  check_pcgrad_args(gram_in, order_in);
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor order = order_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  at::Tensor scratch = workspace(gram, pcgrad_scratch(T));
  pcgrad_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      gram.const_data_ptr<double>(), order.const_data_ptr<int64_t>(), w.mutable_data_ptr<double>(),
      scratch.mutable_data_ptr<double>(), N, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}

std::tuple<at::Tensor, at::Tensor> gradvac_weights_cuda(const at::Tensor& gram_in, const at::Tensor& order_in,
                                                        const at::Tensor& target_in, double beta,
                                                        bool every_pair) {
  check_gradvac_args(gram_in, order_in, target_in, beta);
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor order = order_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  at::Tensor target = target_in.clone(at::MemoryFormat::Contiguous);
  if (N == 0 || T == 0) return {w, target};
  at::Tensor scratch = workspace(gram, gradvac_scratch(T));
  gradvac_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      gram.const_data_ptr<double>(), order.const_data_ptr<int64_t>(), target.mutable_data_ptr<double>(), beta,
      every_pair, w.mutable_data_ptr<double>(), scratch.mutable_data_ptr<double>(), N, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {w, target};
}

at::Tensor mgda_weights_cuda(const at::Tensor& gram_in, int64_t max_iter, double tol) {
  check_mgda_args(gram_in, max_iter, tol);
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  at::Tensor scratch = workspace(gram, mgda_scratch(T));
  mgda_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      gram.const_data_ptr<double>(), max_iter, tol, w.mutable_data_ptr<double>(),
      scratch.mutable_data_ptr<double>(), N, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}

at::Tensor min_norm_weights_cuda(const at::Tensor& gram_in) {
  check_gram(gram_in, "min_norm_weights");
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  at::Tensor scratch = workspace(gram, min_norm_scratch(T));
  min_norm_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      gram.const_data_ptr<double>(), w.mutable_data_ptr<double>(), scratch.mutable_data_ptr<double>(), N, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}

at::Tensor peltr_weights_cuda(const at::Tensor& gram_in, const at::Tensor& lower_in) {
  check_peltr_args(gram_in, lower_in);
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor lower = lower_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  at::Tensor scratch = workspace(gram, peltr_scratch(T));
  peltr_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      gram.const_data_ptr<double>(), lower.const_data_ptr<double>(), w.mutable_data_ptr<double>(),
      scratch.mutable_data_ptr<double>(), N, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}

__global__ void dual_cone_kernel(const double* __restrict__ G, const double* __restrict__ U, double* __restrict__ V,
                                 double* __restrict__ scratch, int64_t P, int64_t K, int64_t T) {
  const int64_t p = problem_index();  // problem (n, k) = (p / K, p % K)
  if (p >= P) return;
  double* v = V + p * T;
  mark_bad(dual_cone_solve(G + (p / K) * T * T, U + p * T, T, v, scratch + p * dual_cone_scratch(T)), v, T);
}

at::Tensor dual_cone_weights_cuda(const at::Tensor& gram_in, const at::Tensor& bounds_in) {
  check_dual_cone_args(gram_in, bounds_in);
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor bounds = bounds_in.contiguous();
  const int64_t N = gram.size(0), K = bounds.size(1), T = gram.size(1);
  at::Tensor v = at::empty({N, K, T}, gram.options());
  if (N == 0 || K == 0 || T == 0) return v;
  at::Tensor scratch = at::empty({N * K * dual_cone_scratch(T)}, gram.options());  // one slice per (n, k)
  dual_cone_kernel<<<blocks_for(N * K), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      gram.const_data_ptr<double>(), bounds.const_data_ptr<double>(), v.mutable_data_ptr<double>(),
      scratch.mutable_data_ptr<double>(), N * K, K, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return v;
}

__global__ void cagrad_kernel(const double* __restrict__ G, double c, double* __restrict__ W,
                              double* __restrict__ scratch, int64_t N, int64_t T) {
  const int64_t n = problem_index();
  if (n >= N) return;
  double* w = W + n * T;
  mark_bad(cagrad_solve(G + n * T * T, T, c, w, scratch + n * cagrad_scratch(T)), w, T);
}

at::Tensor cagrad_weights_cuda(const at::Tensor& gram_in, double c) {
  check_cagrad_args(gram_in, c);
  const c10::cuda::CUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  at::Tensor scratch = workspace(gram, cagrad_scratch(T));
  cagrad_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      gram.const_data_ptr<double>(), c, w.mutable_data_ptr<double>(), scratch.mutable_data_ptr<double>(), N, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return w;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CUDA, m) {
  m.impl("pcgrad_weights", &pcgrad_weights_cuda);
  m.impl("gradvac_weights", &gradvac_weights_cuda);
  m.impl("mgda_weights", &mgda_weights_cuda);
  m.impl("min_norm_weights", &min_norm_weights_cuda);
  m.impl("peltr_weights", &peltr_weights_cuda);
  m.impl("dual_cone_weights", &dual_cone_weights_cuda);
  m.impl("cagrad_weights", &cagrad_weights_cuda);
}

}  // namespace mtlk
