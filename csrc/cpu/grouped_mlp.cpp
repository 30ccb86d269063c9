// Grouped MLP, CPU epilogues over [G, R, C] blocks (group, row, column; unit column stride,
// any group and row strides, so [B, G, w] activations and [G, B, w] product scratch are both
// read and written in place): bias + ReLU (+ PPNet gate 2 sigmoid(u)) after the products, and
// the fused backward pass (add the output's own gradient, gate and gate-logit gradient, ReLU
// mask, bias-gradient column sums). One pass each, one
// call for all groups, vectorised over columns with at::vec, parallel over blocks of rows
// (per-thread column sums added at the end). bfloat16/half are widened to float.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "grouped_mlp.h"

namespace mtlk::cpu {
namespace {

using at::vec::Vectorized;

// Rows per parallel task (each task walks all groups and columns of its rows).
constexpr int64_t kRowBlock = 32;
// Below this many elements the whole block is one task.
constexpr int64_t kParallelElements = 1 << 16;

// A [G, R, C] view: element (g, r, c) at p[g * sg + r * sr + c].
template <typename T>
struct Block {
  T* p;
  int64_t sg, sr;
  T* row(int64_t g, int64_t r) const { return p + g * sg + r * sr; }
};

template <typename T>
Block<T> block(const at::Tensor& t) {
  return {t.defined() ? const_cast<T*>(t.const_data_ptr<T>()) : nullptr, t.defined() ? t.stride(0) : 0,
          t.defined() ? t.stride(1) : 0};
}

// f(r0, r1) over blocks of rows (every group, every column of them).
template <typename F>
void for_row_blocks(int64_t G, int64_t R, int64_t C, const F& f) {
  const int64_t grain = G * R * C < kParallelElements ? R : kRowBlock;
  at::parallel_for(0, R, grain, f);
}

// Loads/stores of up to kStep columns as two float vectors: float/double natively (kStep =
// 2 vectors), bfloat16/half widened (kStep = one reduced vector = two float vectors).
template <typename T>
struct Lanes {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  using VecA = Vectorized<Acc>;
  static constexpr bool kNative = std::is_same_v<T, Acc>;
  static constexpr int64_t kStep = 2 * VecA::size();
  static std::tuple<VecA, VecA> load(const T* p, int64_t n) {
    if constexpr (kNative) {
      constexpr int64_t V = VecA::size();
      if (n == kStep) return {VecA::loadu(p), VecA::loadu(p + V)};
      return {VecA::loadu(p, std::min(n, V)), n > V ? VecA::loadu(p + V, n - V) : VecA(0)};
    } else {
      using VecT = Vectorized<T>;
      return at::vec::convert_to_float<T>(n == kStep ? VecT::loadu(p) : VecT::loadu(p, n));
    }
  }
  static void store(T* p, const VecA& lo, const VecA& hi, int64_t n) {
    if constexpr (kNative) {
      constexpr int64_t V = VecA::size();
      if (n == kStep) {
        lo.store(p);
        hi.store(p + V);
      } else {
        lo.store(p, std::min(n, V));
        if (n > V) hi.store(p + V, n - V);
      }
    } else {
      const Vectorized<T> v = at::vec::convert_from_float<T>(lo, hi);
      if (n == kStep) {
        v.store(p);
      } else {
        v.store(p, n);
      }
    }
  }
};

// sigmoid(u) lane-wise: 0 for u = -inf, 1 for u = +inf, NaN kept.
template <typename VecA>
VecA sigmoid(const VecA& u) {
  return (VecA(1) + u.neg().exp()).reciprocal();
}

template <typename T>
void bias_relu_kernel(Block<T> dst, Block<T> src, const T* bias, Block<T> gate, int64_t G, int64_t R, int64_t C,
                      bool relu) {
  using L = Lanes<T>;
  using VecA = typename L::VecA;
  for_row_blocks(G, R, C, [&](int64_t r0, int64_t r1) {
    for (int64_t g = 0; g < G; ++g) {
      const T* b = bias + g * C;
      for (int64_t r = r0; r < r1; ++r) {
        T* y = dst.row(g, r);
        const T* x = src.row(g, r);
        for (int64_t j = 0; j < C; j += L::kStep) {
          const int64_t n = std::min(L::kStep, C - j);
          auto [lo, hi] = L::load(x + j, n);
          auto [blo, bhi] = L::load(b + j, n);
          lo = lo + blo;
          hi = hi + bhi;
          if (relu) {  // max(v, 0) keeps NaN, like torch.relu
            lo = VecA::blendv(lo, VecA(0), lo < VecA(0));
            hi = VecA::blendv(hi, VecA(0), hi < VecA(0));
          }
          if (gate.p) {  // * 2 sigmoid(u)
            auto [ulo, uhi] = L::load(gate.row(g, r) + j, n);
            lo = lo * (VecA(2) * sigmoid(ulo));
            hi = hi * (VecA(2) * sigmoid(uhi));
          }
          L::store(y + j, lo, hi, n);
        }
      }
    }
  });
}

template <typename T>
void relu_grad_kernel(Block<T> dst, Block<T> src, Block<T> extra, Block<T> act, T* bias_grad, Block<T> gate,
                      Block<T> gate_grad, int64_t G, int64_t R, int64_t C, bool relu) {
  using L = Lanes<T>;
  using Acc = typename L::Acc;
  using VecA = typename L::VecA;
  constexpr int64_t V = VecA::size();
  const int64_t Cp = (C + L::kStep - 1) / L::kStep * L::kStep;  // padded row of the column sums
  // per-thread column sums [G, Cp], added up after the pass
  std::vector<Acc> partial(static_cast<size_t>(at::get_num_threads() * G * Cp), Acc(0));
  for_row_blocks(G, R, C, [&](int64_t r0, int64_t r1) {
    Acc* sums = partial.data() + at::get_thread_num() * G * Cp;
    for (int64_t g = 0; g < G; ++g) {
      Acc* acc_g = sums + g * Cp;
      for (int64_t r = r0; r < r1; ++r) {
        const T* s = src.row(g, r);
        for (int64_t j = 0; j < C; j += L::kStep) {
          const int64_t n = std::min(L::kStep, C - j);
          auto [lo, hi] = L::load(s + j, n);
          if (extra.p) {
            auto [elo, ehi] = L::load(extra.row(g, r) + j, n);
            lo = lo + elo;
            hi = hi + ehi;
          }
          if (gate.p || relu) {
            auto [alo, ahi] = L::load(act.row(g, r) + j, n);
            if (gate.p) {  // act = y * s, s = 2 sigmoid(u): d/du = v * act * sigmoid(-u); d/dy = v * s
              auto [ulo, uhi] = L::load(gate.row(g, r) + j, n);
              L::store(gate_grad.row(g, r) + j, lo * alo * sigmoid(ulo.neg()), hi * ahi * sigmoid(uhi.neg()), n);
              lo = lo * (VecA(2) * sigmoid(ulo));
              hi = hi * (VecA(2) * sigmoid(uhi));
            }
            if (relu) {  // act > 0 exactly where y > 0 (s > 0), and where s underflows v is 0 already
              lo = VecA::blendv(VecA(0), lo, alo > VecA(0));
              hi = VecA::blendv(VecA(0), hi, ahi > VecA(0));
            }
          }
          if (dst.p) L::store(dst.row(g, r) + j, lo, hi, n);
          Acc* a = acc_g + j;  // lanes past n were loaded as zeros and add nothing
          (VecA::loadu(a) + lo).store(a);
          (VecA::loadu(a + V) + hi).store(a + V);
        }
      }
    }
  });
  const int64_t threads = at::get_num_threads();
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t j = 0; j < C; ++j) {
      Acc total = 0;
      for (int64_t t = 0; t < threads; ++t) total += partial[(t * G + g) * Cp + j];
      bias_grad[g * C + j] = static_cast<T>(total);
    }
  }
}

void check_block(const at::Tensor& t, const char* what, at::IntArrayRef shape) {
  TORCH_CHECK(t.dim() == 3 && t.stride(2) == 1 && t.sizes() == shape, "grouped_mlp: internal error, ", what,
              " must be a ", shape, " block with unit column stride, got ", t.sizes(), " strides ", t.strides());
}

}  // namespace

void bias_relu_(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& bias, bool relu,
                const at::Tensor& gate) {
  if (dst.numel() == 0) return;
  check_block(dst, "output", dst.sizes());
  check_block(src, "product", dst.sizes());
  if (gate.defined()) check_block(gate, "gate", dst.sizes());
  const int64_t G = dst.size(0), R = dst.size(1), C = dst.size(2);
  const at::Tensor b = bias.contiguous();
  TORCH_CHECK(b.numel() == G * C, "grouped_mlp: internal error, bias has ", b.numel(), " elements for ", G, "x", C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dst.scalar_type(), "grouped_mlp_bias_relu", [&] {
    bias_relu_kernel<scalar_t>(block<scalar_t>(dst), block<scalar_t>(src), b.const_data_ptr<scalar_t>(),
                               block<scalar_t>(gate), G, R, C, relu);
  });
}

void relu_grad_(const at::Tensor& dst, const at::Tensor& src, const std::optional<at::Tensor>& extra,
                const at::Tensor& act, bool relu, const at::Tensor& bias_grad, const at::Tensor& gate,
                const at::Tensor& gate_grad) {
  if (src.numel() == 0) {  // an empty batch: the bias gradient is a sum over no rows
    bias_grad.zero_();
    return;
  }
  if (gate.defined()) {
    check_block(gate, "gate", src.sizes());
    check_block(gate_grad, "gate gradient", src.sizes());
  }
  check_block(src, "gradient", src.sizes());
  check_block(act, "activation", src.sizes());
  if (dst.defined()) check_block(dst, "gradient output", src.sizes());
  if (extra.has_value()) check_block(*extra, "output gradient", src.sizes());
  const int64_t G = src.size(0), R = src.size(1), C = src.size(2);
  TORCH_CHECK(bias_grad.is_contiguous() && bias_grad.numel() == G * C, "grouped_mlp: internal error, bias grad");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "grouped_mlp_relu_grad", [&] {
    relu_grad_kernel<scalar_t>(block<scalar_t>(dst), block<scalar_t>(src),
                               block<scalar_t>(extra.has_value() ? *extra : at::Tensor()), block<scalar_t>(act),
                               bias_grad.data_ptr<scalar_t>(), block<scalar_t>(gate), block<scalar_t>(gate_grad), G,
                               R, C, relu);
  });
}

}  // namespace mtlk::cpu
