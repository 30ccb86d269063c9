// Gate mixture, CPU kernels: softmax over experts fused with the weighted sum of the
// expert outputs, forward and backward, one pass over each batch row.
//
//   out[b, t, :] = sum_x p[b, t, x] * experts[b, x, :],  p = masked softmax(logits[b, t, :])
//
// The backward recomputes p from the logits (T*X exps per row) instead of keeping a
// [B, T, X] probability tensor alive between forward and backward.
// Vectorised with at::vec at the ISA the extension was built for (setup.py MTLK_CPU_ISA);
// bfloat16/half rows are widened to float in a per-thread scratch buffer.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "gate_mix_checks.h"
#include "mtlk/gate_mix.h"

namespace mtlk {
namespace {

using at::vec::Vectorized;

// out[t, :] = sum_x p[t, x] * E[x, :] for one batch row (E [X, D], p [T, X], out [T, D]).
template <typename acc_t>
void mix_row(const acc_t* E, const acc_t* p, acc_t* out, int64_t T, int64_t X, int64_t D) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  for (int64_t t = 0; t < T; ++t) {
    const acc_t* pt = p + t * X;
    acc_t* ot = out + t * D;
    int64_t d = 0;
    for (; d + 4 * V <= D; d += 4 * V) {
      Vec a0(0), a1(0), a2(0), a3(0);
      for (int64_t x = 0; x < X; ++x) {
        const Vec w(pt[x]);
        const acc_t* e = E + x * D + d;
        a0 = at::vec::fmadd(w, Vec::loadu(e), a0);
        a1 = at::vec::fmadd(w, Vec::loadu(e + V), a1);
        a2 = at::vec::fmadd(w, Vec::loadu(e + 2 * V), a2);
        a3 = at::vec::fmadd(w, Vec::loadu(e + 3 * V), a3);
      }
      a0.store(ot + d);
      a1.store(ot + d + V);
      a2.store(ot + d + 2 * V);
      a3.store(ot + d + 3 * V);
    }
    for (; d < D; d += V) {
      const int64_t n = std::min<int64_t>(V, D - d);
      Vec a(0);
      for (int64_t x = 0; x < X; ++x) {
        a = at::vec::fmadd(Vec(pt[x]), Vec::loadu(E + x * D + d, n), a);
      }
      a.store(ot + d, n);
    }
  }
}

// <u, v> over n contiguous elements.
template <typename acc_t>
acc_t dot(const acc_t* u, const acc_t* v, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec a0(0), a1(0);
  int64_t i = 0;
  for (; i + 2 * V <= n; i += 2 * V) {
    a0 = at::vec::fmadd(Vec::loadu(u + i), Vec::loadu(v + i), a0);
    a1 = at::vec::fmadd(Vec::loadu(u + i + V), Vec::loadu(v + i + V), a1);
  }
  for (; i < n; i += V) {
    const int64_t k = std::min<int64_t>(V, n - i);
    a0 = at::vec::fmadd(Vec::loadu(u + i, k), Vec::loadu(v + i, k), a0);
  }
  return at::vec::vec_reduce_all<acc_t>([](Vec& x, Vec& y) { return x + y; }, a0 + a1);
}

// One batch row of the backward: dE[x, :] = sum_t p[t, x] * g[t, :] and
// dp[t, x] = <g[t, :], E[x, :]>.
template <typename acc_t>
void mix_row_backward(const acc_t* E, const acc_t* p, const acc_t* g, acc_t* dE, acc_t* dp,
                      int64_t T, int64_t X, int64_t D) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  for (int64_t x = 0; x < X; ++x) {
    acc_t* de = dE + x * D;
    int64_t d = 0;
    for (; d + 2 * V <= D; d += 2 * V) {
      Vec a0(0), a1(0);
      for (int64_t t = 0; t < T; ++t) {
        const Vec w(p[t * X + x]);
        a0 = at::vec::fmadd(w, Vec::loadu(g + t * D + d), a0);
        a1 = at::vec::fmadd(w, Vec::loadu(g + t * D + d + V), a1);
      }
      a0.store(de + d);
      a1.store(de + d + V);
    }
    for (; d < D; d += V) {
      const int64_t n = std::min<int64_t>(V, D - d);
      Vec a(0);
      for (int64_t t = 0; t < T; ++t) {
        a = at::vec::fmadd(Vec(p[t * X + x]), Vec::loadu(g + t * D + d, n), a);
      }
      a.store(de + d, n);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t x = 0; x < X; ++x) dp[t * X + x] = dot(g + t * D, E + x * D, D);
  }
}

// Rows whose logits are bad: the lowest flat (b * T + t) index wins, so the error
// message does not depend on thread scheduling.
class BadRow {
 public:
  void report(int64_t row) {
    int64_t cur = first_.load(std::memory_order_relaxed);
    while (row < cur && !first_.compare_exchange_weak(cur, row)) {
    }
  }
  template <typename scalar_t>
  void raise_if_any(const scalar_t* L, const bool* mask, int64_t T, int64_t X, const char* op) {
    const int64_t row = first_.load();
    if (row == std::numeric_limits<int64_t>::max()) return;
    std::vector<double> scratch(X);
    const int status =
        masked_softmax_row(L + row * X, mask ? mask + (row % T) * X : nullptr, X, scratch.data());
    TORCH_CHECK_VALUE(status != kGateRowNonFinite, op, ": logits[", row / T, ", ", row % T,
                      "] holds NaN or +inf among the experts the task may see");
    TORCH_CHECK_VALUE(false, op, ": logits[", row / T, ", ", row % T,
                      "] has no expert to mix: every expert is masked out or has logit -inf");
  }

 private:
  std::atomic<int64_t> first_{std::numeric_limits<int64_t>::max()};
};

// The T gate rows of batch row b into p [T, X]; false (and the row reported) if any is bad.
template <typename scalar_t, typename acc_t>
bool softmax_rows(const scalar_t* Lb, const bool* M, int64_t b, int64_t T, int64_t X, acc_t* p,
                  BadRow& bad) {
  bool ok = true;
  for (int64_t t = 0; t < T; ++t) {
    if (masked_softmax_row(Lb + t * X, M ? M + t * X : nullptr, X, p + t * X) != kGateRowOk) {
      bad.report(b * T + t);
      ok = false;
    }
  }
  return ok;
}

// Copies n elements of `src` into `dst`, converting between storage and compute types.
template <typename dst_t, typename src_t>
void convert(const src_t* src, dst_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i]);
}

int64_t grain_rows(int64_t T, int64_t X, int64_t D) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, (X + T) * D + T * X));
}

// Forward over all batch rows of one dtype (contiguous pointers; P may be null).
template <typename scalar_t>
void forward_rows(const scalar_t* E, const scalar_t* L, const bool* M, scalar_t* O, scalar_t* Pout,
                  int64_t B, int64_t T, int64_t X, int64_t D) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  BadRow bad;
  at::parallel_for(0, B, grain_rows(T, X, D), [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> p(T * X);
    std::vector<acc_t> ebuf(widen ? X * D : 0), obuf(widen ? T * D : 0);
    for (int64_t b = b0; b < b1; ++b) {
      if (!softmax_rows(L + b * T * X, M, b, T, X, p.data(), bad)) continue;
      if (Pout != nullptr) convert(p.data(), Pout + b * T * X, T * X);
      if constexpr (widen) {
        convert(E + b * X * D, ebuf.data(), X * D);
        mix_row(ebuf.data(), p.data(), obuf.data(), T, X, D);
        convert(obuf.data(), O + b * T * D, T * D);
      } else {
        mix_row(E + b * X * D, p.data(), O + b * T * D, T, X, D);
      }
    }
  });
  bad.raise_if_any(L, M, T, X, "gate_mix");
}

// Backward over all batch rows of one dtype (contiguous pointers; GP may be null).
template <typename scalar_t>
void backward_rows(const scalar_t* G, const scalar_t* GP, const scalar_t* E, const scalar_t* L,
                   const bool* M, scalar_t* dE, scalar_t* dL, int64_t B, int64_t T, int64_t X,
                   int64_t D) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  BadRow bad;
  at::parallel_for(0, B, grain_rows(T, X, D), [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> p(T * X), dp(T * X), gp(GP ? X : 0);
    std::vector<acc_t> ebuf(widen ? X * D : 0), gbuf(widen ? T * D : 0), debuf(widen ? X * D : 0);
    for (int64_t b = b0; b < b1; ++b) {
      if (!softmax_rows(L + b * T * X, M, b, T, X, p.data(), bad)) continue;
      if constexpr (widen) {
        convert(E + b * X * D, ebuf.data(), X * D);
        convert(G + b * T * D, gbuf.data(), T * D);
        mix_row_backward(ebuf.data(), p.data(), gbuf.data(), debuf.data(), dp.data(), T, X, D);
        convert(debuf.data(), dE + b * X * D, X * D);
      } else {
        mix_row_backward(E + b * X * D, p.data(), G + b * T * D, dE + b * X * D, dp.data(), T, X, D);
      }
      for (int64_t t = 0; t < T; ++t) {
        const acc_t* gpt = nullptr;
        if (GP != nullptr) {
          convert(GP + (b * T + t) * X, gp.data(), X);
          gpt = gp.data();
        }
        softmax_backward_row(&p[t * X], &dp[t * X], gpt, X, dL + (b * T + t) * X);
      }
    }
  });
  bad.raise_if_any(L, M, T, X, "gate_mix_backward");
}

std::tuple<at::Tensor, at::Tensor> gate_mix_cpu(const at::Tensor& experts_in,
                                                const at::Tensor& logits_in,
                                                const std::optional<at::Tensor>& expert_mask,
                                                bool return_probs) {
  check_gate_mix_args(experts_in, logits_in, expert_mask);
  const at::Tensor experts = experts_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor mask = expert_mask.has_value() ? expert_mask->contiguous() : at::Tensor();
  const int64_t B = experts.size(0), X = experts.size(1), D = experts.size(2);
  const int64_t T = logits.size(1);
  at::Tensor out = at::empty({B, T, D}, experts.options());
  at::Tensor probs = at::empty({return_probs ? B : 0, T, X}, logits.options());
  if (B == 0 || T == 0) return {out, probs};
  TORCH_CHECK_VALUE(X > 0, "gate_mix: experts has X = 0 experts to mix");

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, experts.scalar_type(), "gate_mix_cpu", [&] {
    forward_rows<scalar_t>(experts.const_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(),
                           mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
                           out.mutable_data_ptr<scalar_t>(),
                           return_probs ? probs.mutable_data_ptr<scalar_t>() : nullptr, B, T, X, D);
  });
  return {out, probs};
}

std::tuple<at::Tensor, at::Tensor> gate_mix_backward_cpu(
    const at::Tensor& grad_out_in, const std::optional<at::Tensor>& grad_probs_in,
    const at::Tensor& experts_in, const at::Tensor& logits_in,
    const std::optional<at::Tensor>& expert_mask) {
  check_gate_mix_backward_args(grad_out_in, grad_probs_in, experts_in, logits_in, expert_mask);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor grad_probs = grad_probs_in.has_value() ? grad_probs_in->contiguous() : at::Tensor();
  const at::Tensor experts = experts_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor mask = expert_mask.has_value() ? expert_mask->contiguous() : at::Tensor();
  const int64_t B = experts.size(0), X = experts.size(1), D = experts.size(2);
  const int64_t T = logits.size(1);
  at::Tensor grad_experts = at::empty({B, X, D}, experts.options());
  at::Tensor grad_logits = at::empty({B, T, X}, logits.options());
  if (B == 0) return {grad_experts, grad_logits};
  if (T == 0) return {grad_experts.zero_(), grad_logits};
  TORCH_CHECK_VALUE(X > 0, "gate_mix_backward: experts has X = 0 experts to mix");

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, experts.scalar_type(), "gate_mix_backward_cpu", [&] {
    backward_rows<scalar_t>(grad_out.const_data_ptr<scalar_t>(),
                            grad_probs.defined() ? grad_probs.const_data_ptr<scalar_t>() : nullptr,
                            experts.const_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(),
                            mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
                            grad_experts.mutable_data_ptr<scalar_t>(),
                            grad_logits.mutable_data_ptr<scalar_t>(), B, T, X, D);
  });
  return {grad_experts, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CPU, m) {
  m.impl("gate_mix", &gate_mix_cpu);
  m.impl("gate_mix_backward", &gate_mix_backward_cpu);
}

}  // namespace mtlk
