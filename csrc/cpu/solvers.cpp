// T x T solvers, CPU kernels: PCGrad, GradVac, MGDA min-norm and PE-LTR weights for N
// independent problems, at::parallel_for over N. The per-problem math is in
// csrc/include/mtlk/solvers.h (shared with the CUDA kernels); this file checks arguments,
// hands each chunk of problems one scratch buffer (on the stack for T <= 16) and turns a
// bad status into an error naming the argument and the first bad problem.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <sstream>
#include <tuple>
#include <vector>

#include "mtlk/solvers.h"
#include "solvers_checks.h"

namespace mtlk {
namespace {

// One problem's scratch: on the stack up to peltr_scratch(16) = 608 doubles, else on the heap.
class Scratch {
 public:
  explicit Scratch(int64_t n) {
    if (n > kInline) heap_.resize(static_cast<size_t>(n));
  }
  double* data() { return heap_.empty() ? inline_ : heap_.data(); }

 private:
  static constexpr int64_t kInline = 640;
  double inline_[kInline];
  std::vector<double> heap_;
};

// Problems per parallel_for chunk: about 32k flops of O(T^3) work, so small batches stay
// on the calling thread.
int64_t grain(int64_t T) { return std::max<int64_t>(1, 32768 / (T * T * T + 1)); }

// The lowest bad problem index and its status, independent of thread scheduling.
class FirstBad {
 public:
  void report(int64_t n) {
    int64_t cur = first_.load(std::memory_order_relaxed);
    while (n < cur && !first_.compare_exchange_weak(cur, n)) {
    }
  }
  bool any() const { return first_.load() != std::numeric_limits<int64_t>::max(); }
  int64_t first() const { return first_.load(); }

 private:
  std::atomic<int64_t> first_{std::numeric_limits<int64_t>::max()};
};

// Runs solve(n, scratch) -> status over all N problems; returns the first bad n or -1.
template <typename Solve>
int64_t for_each_problem(int64_t N, int64_t T, int64_t scratch_size, const Solve& solve) {
  FirstBad bad;
  at::parallel_for(0, N, grain(T), [&](int64_t n0, int64_t n1) {
    Scratch scratch(scratch_size);
    for (int64_t n = n0; n < n1; ++n) {
      if (solve(n, scratch.data()) != kSolverOk) bad.report(n);
    }
  });
  return bad.any() ? bad.first() : -1;
}

[[noreturn]] void raise_status(const char* op, int status, int64_t n, int64_t T, const int64_t* order,
                               const double* lower) {
  if (status == kSolverNonFiniteGram) {
    TORCH_CHECK_VALUE(false, op, ": gram[", n, "] holds NaN or Inf");
  }
  if (status == kSolverBadOrder) {
    for (int64_t i = 0; i < T; ++i) {
      const int64_t* row = order + (n * T + i) * T;
      if (is_permutation(row, T)) continue;
      std::ostringstream got;
      for (int64_t k = 0; k < T; ++k) got << (k ? ", " : "") << row[k];
      TORCH_CHECK_VALUE(false, op, ": order[", n, ", ", i, "] must be a permutation of 0..", T - 1,
                        ", got [", got.str(), "]");
    }
  }
  if (status == kSolverBadTarget) {
    TORCH_CHECK_VALUE(false, op, ": target[", n, "] must hold cosine targets in [-1, 1] (no NaN)");
  }
  if (status == kSolverBadLowerBounds) {
    double sum = 0.0;
    for (int64_t k = 0; k < T; ++k) sum += lower[n * T + k];
    TORCH_CHECK_VALUE(false, op, ": lower_bounds[", n, "] must be >= 0 with sum <= 1 (got sum ", sum,
                      "); no weight vector in the simplex meets them");
  }
  TORCH_CHECK(false, op, ": internal error, status ", status, " for problem ", n);
}

// Status of problem n, recomputed serially for the error message.
template <typename Solve>
void raise_if_bad(int64_t bad, const char* op, int64_t T, int64_t scratch_size, const Solve& solve,
                  const int64_t* order, const double* lower) {
  if (bad < 0) return;
  Scratch scratch(scratch_size);
  raise_status(op, solve(bad, scratch.data()), bad, T, order, lower);
}

at::Tensor pcgrad_weights_cpu(const at::Tensor& gram_in, const at::Tensor& order_in) {
  check_pcgrad_args(gram_in, order_in);
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor order = order_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  const double* G = gram.const_data_ptr<double>();
  const int64_t* O = order.const_data_ptr<int64_t>();
  double* W = w.mutable_data_ptr<double>();
  const auto solve = [&](int64_t n, double* scratch) {
    return pcgrad_solve(G + n * T * T, O + n * T * T, T, W + n * T, scratch);
  };
  const int64_t bad = for_each_problem(N, T, pcgrad_scratch(T), solve);
  raise_if_bad(bad, "pcgrad_weights", T, pcgrad_scratch(T), solve, O, nullptr);
  return w;
}

std::tuple<at::Tensor, at::Tensor> gradvac_weights_cpu(const at::Tensor& gram_in, const at::Tensor& order_in,
                                                       const at::Tensor& target_in, double beta,
                                                       bool every_pair) {
  check_gradvac_args(gram_in, order_in, target_in, beta);
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor order = order_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  at::Tensor target = target_in.clone(at::MemoryFormat::Contiguous);
  if (N == 0 || T == 0) return {w, target};
  const double* G = gram.const_data_ptr<double>();
  const int64_t* O = order.const_data_ptr<int64_t>();
  double* P = target.mutable_data_ptr<double>();
  double* W = w.mutable_data_ptr<double>();
  const auto solve = [&](int64_t n, double* scratch) {
    return gradvac_solve(G + n * T * T, O + n * T * T, P + n * T * T, beta, every_pair, T, W + n * T, scratch);
  };
  const int64_t bad = for_each_problem(N, T, gradvac_scratch(T), solve);
  // gradvac_solve validates before it updates the target, so re-running it on the bad problem
  // only recomputes the status.
  raise_if_bad(bad, "gradvac_weights", T, gradvac_scratch(T), solve, O, nullptr);
  return {w, target};
}

at::Tensor mgda_weights_cpu(const at::Tensor& gram_in, int64_t max_iter, double tol) {
  check_mgda_args(gram_in, max_iter, tol);
  const at::Tensor gram = gram_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  const double* G = gram.const_data_ptr<double>();
  double* W = w.mutable_data_ptr<double>();
  const auto solve = [&](int64_t n, double* scratch) {
    return mgda_solve(G + n * T * T, T, max_iter, tol, W + n * T, scratch);
  };
  const int64_t bad = for_each_problem(N, T, mgda_scratch(T), solve);
  raise_if_bad(bad, "mgda_weights", T, mgda_scratch(T), solve, nullptr, nullptr);
  return w;
}

at::Tensor min_norm_weights_cpu(const at::Tensor& gram_in) {
  check_gram(gram_in, "min_norm_weights");
  const at::Tensor gram = gram_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  const double* G = gram.const_data_ptr<double>();
  double* W = w.mutable_data_ptr<double>();
  const auto solve = [&](int64_t n, double* scratch) { return min_norm_solve(G + n * T * T, T, W + n * T, scratch); };
  const int64_t bad = for_each_problem(N, T, min_norm_scratch(T), solve);
  raise_if_bad(bad, "min_norm_weights", T, min_norm_scratch(T), solve, nullptr, nullptr);
  return w;
}

at::Tensor peltr_weights_cpu(const at::Tensor& gram_in, const at::Tensor& lower_in) {
  check_peltr_args(gram_in, lower_in);
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor lower = lower_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  const double* G = gram.const_data_ptr<double>();
  const double* C = lower.const_data_ptr<double>();
  double* W = w.mutable_data_ptr<double>();
  const auto solve = [&](int64_t n, double* scratch) {
    return peltr_solve(G + n * T * T, C + n * T, T, W + n * T, scratch);
  };
  const int64_t bad = for_each_problem(N, T, peltr_scratch(T), solve);
  raise_if_bad(bad, "peltr_weights", T, peltr_scratch(T), solve, nullptr, C);
  return w;
}

at::Tensor dual_cone_weights_cpu(const at::Tensor& gram_in, const at::Tensor& bounds_in) {
  check_dual_cone_args(gram_in, bounds_in);
  const at::Tensor gram = gram_in.contiguous();
  const at::Tensor bounds = bounds_in.contiguous();
  const int64_t N = gram.size(0), K = bounds.size(1), T = gram.size(1);
  at::Tensor v = at::empty({N, K, T}, gram.options());
  if (N == 0 || K == 0 || T == 0) return v;
  const double* G = gram.const_data_ptr<double>();
  const double* U = bounds.const_data_ptr<double>();
  double* V = v.mutable_data_ptr<double>();
  const auto solve = [&](int64_t p, double* scratch) {  // problem p = (n, k)
    return dual_cone_solve(G + (p / K) * T * T, U + p * T, T, V + p * T, scratch);
  };
  const int64_t bad = for_each_problem(N * K, T, dual_cone_scratch(T), solve);
  if (bad >= 0) {
    Scratch scratch(dual_cone_scratch(T));
    const int status = solve(bad, scratch.data());
    TORCH_CHECK_VALUE(status != kSolverNonFiniteBound, "dual_cone_weights: bounds[", bad / K, ", ", bad % K,
                      "] holds NaN or Inf");
    raise_status("dual_cone_weights", status, bad / K, T, nullptr, nullptr);
  }
  return v;
}

at::Tensor cagrad_weights_cpu(const at::Tensor& gram_in, double c) {
  check_cagrad_args(gram_in, c);
  const at::Tensor gram = gram_in.contiguous();
  const int64_t N = gram.size(0), T = gram.size(1);
  at::Tensor w = at::empty({N, T}, gram.options());
  if (N == 0 || T == 0) return w;
  const double* G = gram.const_data_ptr<double>();
  double* W = w.mutable_data_ptr<double>();
  const auto solve = [&](int64_t n, double* scratch) { return cagrad_solve(G + n * T * T, T, c, W + n * T, scratch); };
  const int64_t bad = for_each_problem(N, T, cagrad_scratch(T), solve);
  raise_if_bad(bad, "cagrad_weights", T, cagrad_scratch(T), solve, nullptr, nullptr);
  return w;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CPU, m) {
  m.impl("pcgrad_weights", &pcgrad_weights_cpu);
  m.impl("gradvac_weights", &gradvac_weights_cpu);
  m.impl("mgda_weights", &mgda_weights_cpu);
  m.impl("min_norm_weights", &min_norm_weights_cpu);
  m.impl("peltr_weights", &peltr_weights_cpu);
  m.impl("dual_cone_weights", &dual_cone_weights_cpu);
  m.impl("cagrad_weights", &cagrad_weights_cpu);
}

// The weights are constants of the update (no reference differentiates through them): the
// Autograd key falls through, so outputs never require grad and no "autograd kernel was not
// registered" warning fires when gram comes from a graph. Registered here, in the file every
// build compiles, for all devices.
TORCH_LIBRARY_IMPL(mtlk, Autograd, m) {
  m.impl("pcgrad_weights", torch::CppFunction::makeFallthrough());
  m.impl("gradvac_weights", torch::CppFunction::makeFallthrough());
  m.impl("mgda_weights", torch::CppFunction::makeFallthrough());
  m.impl("min_norm_weights", torch::CppFunction::makeFallthrough());
  m.impl("peltr_weights", torch::CppFunction::makeFallthrough());
  m.impl("dual_cone_weights", torch::CppFunction::makeFallthrough());
  m.impl("cagrad_weights", torch::CppFunction::makeFallthrough());
}

}  // namespace mtlk
