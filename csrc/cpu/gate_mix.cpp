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

#include "cpu/vec_store.h"
#include "gate_mix_checks.h"
#include "mtlk/gate_mix.h"

namespace mtlk {
namespace {

using at::vec::Vectorized;

// out[t, :] = sum_x p[t, x] * E[x, :] for tasks t0 .. t0+NT-1 of one batch row
// (E [X, D] with row stride sx, p [T, X], out [T, D]). Each expert vector loaded feeds NT
// accumulators.
template <int NT, typename acc_t>
void mix_tasks(const acc_t* E, int64_t sx, const acc_t* p, acc_t* out, int64_t t0, int64_t X, int64_t D) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  int64_t d = 0;
  for (; d + 2 * V <= D; d += 2 * V) {
    Vec a0[NT], a1[NT];
    for (int j = 0; j < NT; ++j) a0[j] = a1[j] = Vec(0);
    for (int64_t x = 0; x < X; ++x) {
      const Vec e0 = Vec::loadu(E + x * sx + d);
      const Vec e1 = Vec::loadu(E + x * sx + d + V);
      for (int j = 0; j < NT; ++j) {
        const Vec w(p[(t0 + j) * X + x]);
        a0[j] = at::vec::fmadd(w, e0, a0[j]);
        a1[j] = at::vec::fmadd(w, e1, a1[j]);
      }
    }
    for (int j = 0; j < NT; ++j) {
      store_stream(a0[j], out + (t0 + j) * D + d);
      store_stream(a1[j], out + (t0 + j) * D + d + V);
    }
  }
  for (; d < D; d += V) {
    const int64_t n = std::min<int64_t>(V, D - d);
    Vec a[NT];
    for (int j = 0; j < NT; ++j) a[j] = Vec(0);
    for (int64_t x = 0; x < X; ++x) {
      const Vec e = Vec::loadu(E + x * sx + d, n);
      for (int j = 0; j < NT; ++j) a[j] = at::vec::fmadd(Vec(p[(t0 + j) * X + x]), e, a[j]);
    }
    for (int j = 0; j < NT; ++j) a[j].store(out + (t0 + j) * D + d, n);
  }
}

// out[t, :] = sum_x p[t, x] * E[x, :] for one batch row, tasks in groups of four.
template <typename acc_t>
void mix_row(const acc_t* E, int64_t sx, const acc_t* p, acc_t* out, int64_t T, int64_t X, int64_t D) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) mix_tasks<4>(E, sx, p, out, t, X, D);
  switch (T - t) {
    case 3: mix_tasks<3>(E, sx, p, out, t, X, D); break;
    case 2: mix_tasks<2>(E, sx, p, out, t, X, D); break;
    case 1: mix_tasks<1>(E, sx, p, out, t, X, D); break;
    default: break;
  }
}

// Backward of tasks t0 .. t0+NT-1 of one batch row, in one pass over E and g:
//   dE[x, :] (+)= sum_j p[t0+j, x] * g[t0+j, :]    (accumulates onto dE unless `first`)
//   dp[t0+j, x]  = <g[t0+j, :], E[x, :]>
// dE is streamed past the cache only when one group covers all tasks (`stream`): with
// several groups the partial sums are read back, and a non-temporal store to a line that
// is in cache, or a load of a line just streamed out, stalls on memory.
template <int NT, typename acc_t>
void mix_backward_tasks(const acc_t* E, int64_t sx, const acc_t* p, const acc_t* g, acc_t* dE, acc_t* dp,
                        int64_t t0, int64_t X, int64_t D, bool first, bool stream) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  for (int64_t x = 0; x < X; ++x) {
    const acc_t* e_row = E + x * sx;
    acc_t* de_row = dE + x * D;
    Vec dot[NT];
    for (int j = 0; j < NT; ++j) dot[j] = Vec(0);
    int64_t d = 0;
    for (; d + V <= D; d += V) {
      const Vec e = Vec::loadu(e_row + d);
      Vec de = first ? Vec(0) : Vec::loadu(de_row + d);
      for (int j = 0; j < NT; ++j) {
        const Vec gj = Vec::loadu(g + (t0 + j) * D + d);
        de = at::vec::fmadd(Vec(p[(t0 + j) * X + x]), gj, de);
        dot[j] = at::vec::fmadd(gj, e, dot[j]);
      }
      if (stream) {
        store_stream(de, de_row + d);
      } else {
        de.store(de_row + d);
      }
    }
    if (d < D) {
      const int64_t n = D - d;
      const Vec e = Vec::loadu(e_row + d, n);
      Vec de = first ? Vec(0) : Vec::loadu(de_row + d, n);
      for (int j = 0; j < NT; ++j) {
        const Vec gj = Vec::loadu(g + (t0 + j) * D + d, n);
        de = at::vec::fmadd(Vec(p[(t0 + j) * X + x]), gj, de);
        dot[j] = at::vec::fmadd(gj, e, dot[j]);
      }
      de.store(de_row + d, n);
    }
    for (int j = 0; j < NT; ++j) {
      dp[(t0 + j) * X + x] = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, dot[j]);
    }
  }
}

// One batch row of the backward: dE[x, :] = sum_t p[t, x] * g[t, :] and
// dp[t, x] = <g[t, :], E[x, :]>, tasks in groups of four.
template <typename acc_t>
void mix_row_backward(const acc_t* E, int64_t sx, const acc_t* p, const acc_t* g, acc_t* dE, acc_t* dp,
                      int64_t T, int64_t X, int64_t D) {
  const bool stream = T <= 4;
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) mix_backward_tasks<4>(E, sx, p, g, dE, dp, t, X, D, t == 0, stream);
  switch (T - t) {
    case 3: mix_backward_tasks<3>(E, sx, p, g, dE, dp, t, X, D, t == 0, stream); break;
    case 2: mix_backward_tasks<2>(E, sx, p, g, dE, dp, t, X, D, t == 0, stream); break;
    case 1: mix_backward_tasks<1>(E, sx, p, g, dE, dp, t, X, D, t == 0, stream); break;
    default: break;
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
// Same math as mtlk::masked_softmax_row, arranged so every pass vectorises over the T*X
// entries of the batch row. Bad rows need no extra test: a NaN logit, a +inf logit
// (inf - inf) and a row with no visible expert (-inf - -inf) all make the row sum NaN.
template <typename scalar_t, typename acc_t>
bool softmax_rows(const scalar_t* Lb, const bool* M, int64_t b, int64_t T, int64_t X, acc_t* p,
                  BadRow& bad) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const int64_t n = T * X;
  if (M != nullptr) {
    for (int64_t i = 0; i < n; ++i) p[i] = M[i] ? static_cast<acc_t>(Lb[i]) : kNegInf;
  } else {
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<acc_t>(Lb[i]);
  }
  for (int64_t t = 0; t < T; ++t) {
    acc_t* q = p + t * X;
    acc_t m = kNegInf;
    for (int64_t x = 0; x < X; ++x) m = q[x] > m ? q[x] : m;
    for (int64_t x = 0; x < X; ++x) q[x] -= m;
  }
  for (int64_t i = 0; i < n; i += V) {
    const int64_t k = std::min<int64_t>(V, n - i);
    Vec::loadu(p + i, k).exp().store(p + i, k);
  }
  bool ok = true;
  for (int64_t t = 0; t < T; ++t) {
    acc_t* q = p + t * X;
    acc_t s = 0;
    for (int64_t x = 0; x < X; ++x) s += q[x];
    if (!(s > 0)) {
      bad.report(b * T + t);
      ok = false;
      continue;
    }
    const acc_t inv = acc_t(1) / s;
    for (int64_t x = 0; x < X; ++x) q[x] *= inv;
  }
  return ok;
}

// Copies n elements of `src` into `dst`, converting between storage and compute types.
template <typename dst_t, typename src_t>
void convert(const src_t* src, dst_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i]);
}

// experts as is when each expert row [b, x, :] is contiguous (any batch and expert strides,
// e.g. the transposed [X, B, D] output of batched experts), else a contiguous copy.
at::Tensor rows_contiguous(const at::Tensor& experts) {
  return experts.stride(2) == 1 || experts.size(2) == 1 ? experts : experts.contiguous();
}

int64_t grain_rows(int64_t T, int64_t X, int64_t D) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, (X + T) * D + T * X));
}

// Forward over all batch rows of one dtype (contiguous pointers; P may be null).
template <typename scalar_t>
void forward_rows(const scalar_t* E, int64_t sb, int64_t sx, const scalar_t* L, const bool* M, scalar_t* O,
                  scalar_t* Pout, int64_t B, int64_t T, int64_t X, int64_t D) {
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
        for (int64_t x = 0; x < X; ++x) convert(E + b * sb + x * sx, ebuf.data() + x * D, D);
        mix_row(ebuf.data(), D, p.data(), obuf.data(), T, X, D);
        convert(obuf.data(), O + b * T * D, T * D);
      } else {
        mix_row(E + b * sb, sx, p.data(), O + b * T * D, T, X, D);
      }
    }
    store_fence();
  });
  bad.raise_if_any(L, M, T, X, "gate_mix");
}

// Backward over all batch rows of one dtype, for N task gradients: G holds row (k, b)'s [T, D]
// gradient at G + k * sgn + b * sgb, its tasks sgt apart (unit stride within D; a permuted
// view of the per-task backward's gradients is gathered row by row, no copy of the whole); GP
// [N, B, T, X] contiguous or null, dE [N, B, X, D], dL [N, B, T, X]. Each row's gates and experts
// are computed and loaded once, then used for the N tasks.
template <typename scalar_t>
void backward_rows(const scalar_t* G, int64_t sgn, int64_t sgb, int64_t sgt, const scalar_t* GP, const scalar_t* E,
                   int64_t sb, int64_t sx, const scalar_t* L, const bool* M, scalar_t* dE, scalar_t* dL, int64_t N,
                   int64_t B, int64_t T, int64_t X, int64_t D) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  const bool gather = widen || sgt != D;  // the row's [T, D] gradient is not one contiguous block
  BadRow bad;
  at::parallel_for(0, B, std::max<int64_t>(1, grain_rows(T, X, D) / N), [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> p(T * X), dp(T * X), gp(GP ? X : 0);
    std::vector<acc_t> ebuf(widen ? X * D : 0), gbuf(gather ? T * D : 0), debuf(widen ? X * D : 0);
    for (int64_t b = b0; b < b1; ++b) {
      if (!softmax_rows(L + b * T * X, M, b, T, X, p.data(), bad)) continue;
      if constexpr (widen) {
        for (int64_t x = 0; x < X; ++x) convert(E + b * sb + x * sx, ebuf.data() + x * D, D);
      }
      for (int64_t k = 0; k < N; ++k) {
        const int64_t row = k * B + b;  // (task, batch row)
        const scalar_t* g = G + k * sgn + b * sgb;
        if (gather) {
          for (int64_t t = 0; t < T; ++t) convert(g + t * sgt, gbuf.data() + t * D, D);
        }
        if constexpr (widen) {
          mix_row_backward(ebuf.data(), D, p.data(), gbuf.data(), debuf.data(), dp.data(), T, X, D);
          convert(debuf.data(), dE + row * X * D, X * D);
        } else {
          mix_row_backward(E + b * sb, sx, p.data(), gather ? gbuf.data() : g, dE + row * X * D, dp.data(), T, X, D);
        }
        for (int64_t t = 0; t < T; ++t) {
          const acc_t* gpt = nullptr;
          if (GP != nullptr) {
            convert(GP + (row * T + t) * X, gp.data(), X);
            gpt = gp.data();
          }
          softmax_backward_row(&p[t * X], &dp[t * X], gpt, X, dL + (row * T + t) * X);
        }
      }
    }
    store_fence();
  });
  bad.raise_if_any(L, M, T, X, "gate_mix_backward");
}

std::tuple<at::Tensor, at::Tensor> gate_mix_cpu(const at::Tensor& experts_in,
                                                const at::Tensor& logits_in,
                                                const std::optional<at::Tensor>& expert_mask,
                                                bool return_probs) {
  check_gate_mix_args(experts_in, logits_in, expert_mask);
  const at::Tensor experts = rows_contiguous(experts_in);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor mask = expert_mask.has_value() ? expert_mask->contiguous() : at::Tensor();
  const int64_t B = experts.size(0), X = experts.size(1), D = experts.size(2);
  const int64_t T = logits.size(1);
  at::Tensor out = at::empty({B, T, D}, experts.options());
  at::Tensor probs = at::empty({return_probs ? B : 0, T, X}, logits.options());
  if (B == 0 || T == 0) return {out, probs};
  TORCH_CHECK_VALUE(X > 0, "gate_mix: experts has X = 0 experts to mix");

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, experts.scalar_type(), "gate_mix_cpu", [&] {
    forward_rows<scalar_t>(experts.const_data_ptr<scalar_t>(), experts.stride(0), experts.stride(1),
                           logits.const_data_ptr<scalar_t>(),
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
  // any strides with D innermost are read in place (the per-task backward hands a permuted view)
  const at::Tensor grad_out = grad_out_in.stride(-1) == 1 ? grad_out_in : grad_out_in.contiguous();
  const at::Tensor grad_probs = grad_probs_in.has_value() ? grad_probs_in->contiguous() : at::Tensor();
  const at::Tensor experts = rows_contiguous(experts_in);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor mask = expert_mask.has_value() ? expert_mask->contiguous() : at::Tensor();
  const int64_t B = experts.size(0), X = experts.size(1), D = experts.size(2);
  const int64_t T = logits.size(1);
  const bool tasks = grad_out.dim() == 4;  // N task gradients at once
  const int64_t N = tasks ? grad_out.size(0) : 1;
  at::Tensor grad_experts = tasks ? at::empty({N, B, X, D}, experts.options()) : at::empty({B, X, D}, experts.options());
  at::Tensor grad_logits = tasks ? at::empty({N, B, T, X}, logits.options()) : at::empty({B, T, X}, logits.options());
  if (B == 0 || N == 0) return {grad_experts, grad_logits};
  if (T == 0) return {grad_experts.zero_(), grad_logits};
  TORCH_CHECK_VALUE(X > 0, "gate_mix_backward: experts has X = 0 experts to mix");

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, experts.scalar_type(), "gate_mix_backward_cpu", [&] {
    const int64_t lead = tasks ? 1 : 0;
    backward_rows<scalar_t>(grad_out.const_data_ptr<scalar_t>(), tasks ? grad_out.stride(0) : 0,
                            grad_out.stride(lead), grad_out.stride(lead + 1),
                            grad_probs.defined() ? grad_probs.const_data_ptr<scalar_t>() : nullptr,
                            experts.const_data_ptr<scalar_t>(), experts.stride(0), experts.stride(1),
                            logits.const_data_ptr<scalar_t>(),
                            mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
                            grad_experts.mutable_data_ptr<scalar_t>(),
                            grad_logits.mutable_data_ptr<scalar_t>(), N, B, T, X, D);
  });
  return {grad_experts, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CPU, m) {
  m.impl("gate_mix", &gate_mix_cpu);
  m.impl("gate_mix_backward", &gate_mix_backward_cpu);
}

}  // namespace mtlk
