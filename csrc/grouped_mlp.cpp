// Grouped MLP driver, device-generic: the matrix products go through matmul_out (oneDNN or
// MKL on CPU, see csrc/cpu/matmul.cpp; cuBLAS through ATen on CUDA) and the epilogues are one
// fused pass each (csrc/cpu/ on CPU, ATen elementwise ops elsewhere). A shared-input first
// layer is one [B, in] @ [in, G*out] product; every other layer one batched product over the
// group-major [G, B, in] activations, which the forward keeps in that layout so no product
// ever reads a strided operand; only the output is written back batch-major [B, G, out], by
// its epilogue. Measured on CPU, a batched product over contiguous groups is as fast as one
// product per group at Census-sized experts and faster for small ones. PPNet gates (a layer's
// output times 2 sigmoid(u)) are one more read in the same epilogue pass, and their logits'
// gradient one more write in the backward's.
#include "grouped_mlp.h"
#include "grouped_mlp_task_blocks.h"

#include <ATen/ops/add.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/threshold_backward.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace mtlk {
namespace {

struct Dims {
  int64_t B, G;
  std::vector<int64_t> width;  // width[0] = input width, width[l + 1] = output width of layer l
};

Dims check_args(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                const c10::List<bool>& relu, bool shared_input) {
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK_VALUE(L >= 1, "grouped_mlp: weights must hold at least one layer");
  TORCH_CHECK_VALUE(static_cast<int64_t>(biases.size()) == L, "grouped_mlp: biases has ", biases.size(),
                    " entries for ", L, " layers");
  TORCH_CHECK_VALUE(static_cast<int64_t>(relu.size()) == L, "grouped_mlp: relu has ", relu.size(),
                    " entries for ", L, " layers");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "grouped_mlp: x must be floating point, got ",
                   x.scalar_type());
  const at::Tensor& w0 = weights[0];
  TORCH_CHECK_VALUE(w0.dim() == 3, "grouped_mlp: weights[0] must be 3-D, got ", w0.sizes());
  Dims d;
  d.G = shared_input ? w0.size(1) : w0.size(0);
  if (shared_input) {
    TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == w0.size(0), "grouped_mlp: x must be [B, in] = [B, ",
                      w0.size(0), "] (shared input, weights[0] [in, G, out]), got ", x.sizes());
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3 && x.size(1) == d.G && x.size(2) == w0.size(1), "grouped_mlp: x must be [B, G, in] = [B, ",
                      d.G, ", ", w0.size(1), "] (weights[0] [G, in, out]), got ", x.sizes());
  }
  d.B = x.size(0);
  d.width = {x.size(-1)};
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), "grouped_mlp: weights[", l, "] dtype ", w.scalar_type(),
                     " != x dtype ", x.scalar_type());
    TORCH_CHECK(w.device() == x.device(), "grouped_mlp: weights[", l, "] on ", w.device(), " but x on ", x.device());
    if (l > 0 || !shared_input) {
      TORCH_CHECK_VALUE(w.dim() == 3 && w.size(0) == d.G && w.size(1) == d.width[l], "grouped_mlp: weights[", l,
                        "] must be [G, in, out] = [", d.G, ", ", d.width[l], ", out], got ", w.sizes());
    }
    d.width.push_back(w.size(2));
    const at::Tensor& b = biases[l];
    TORCH_CHECK_VALUE(b.dim() == 2 && b.size(0) == d.G && b.size(1) == w.size(2), "grouped_mlp: biases[", l,
                      "] must be [G, out] = [", d.G, ", ", w.size(2), "], got ", b.sizes());
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), "grouped_mlp: biases[", l, "] dtype ", b.scalar_type(),
                     " != x dtype ", x.scalar_type());
    TORCH_CHECK(b.device() == x.device(), "grouped_mlp: biases[", l, "] on ", b.device(), " but x on ", x.device());
  }
  return d;
}

// t itself when its rows are contiguous (what the products and epilogues need), else a copy.
at::Tensor unit_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// The gate logits per layer, [B, G, out_l] with unit column stride, undefined where a layer has
// none (all undefined without gates).
std::vector<at::Tensor> check_gates(const GateList& gates, const at::Tensor& x, const Dims& d) {
  const int64_t L = static_cast<int64_t>(d.width.size()) - 1;
  std::vector<at::Tensor> out(L);
  if (!gates.has_value()) return out;
  TORCH_CHECK_VALUE(static_cast<int64_t>(gates->size()) == L, "grouped_mlp: gates has ", gates->size(),
                    " entries for ", L, " layers");
  for (int64_t l = 0; l < L; ++l) {
    const std::optional<at::Tensor> g = (*gates)[l];
    if (!g.has_value()) continue;
    TORCH_CHECK_VALUE(g->dim() == 3 && g->size(0) == d.B && g->size(1) == d.G && g->size(2) == d.width[l + 1],
                      "grouped_mlp: gates[", l, "] must be [B, G, out] = [", d.B, ", ", d.G, ", ", d.width[l + 1],
                      "], got ", g->sizes());
    TORCH_CHECK_TYPE(g->scalar_type() == x.scalar_type(), "grouped_mlp: gates[", l, "] dtype ", g->scalar_type(),
                     " != x dtype ", x.scalar_type());
    TORCH_CHECK(g->device() == x.device(), "grouped_mlp: gates[", l, "] on ", g->device(), " but x on ", x.device());
    out[l] = unit_stride(*g);
  }
  return out;
}

bool any_defined(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts) {
    if (t.defined()) return true;
  }
  return false;
}

}  // namespace

void matmul_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == b.dim() && out.dim() == a.dim() && (a.dim() == 2 || a.dim() == 3),
              "grouped_mlp: internal error, products take two 2-D or two 3-D operands");
  if (out.device().is_cpu() && cpu::onednn_matmul_out(out, a, b)) return;
  at::Tensor o = out;
  if (a.dim() == 2) {
    at::mm_out(o, a, b);
  } else {
    at::bmm_out(o, a, b);
  }
}

at::Tensor gate_scale(const at::Tensor& u) { return at::sigmoid(u).mul_(2); }

std::pair<at::Tensor, at::Tensor> gate_backward(const at::Tensor& v, const at::Tensor& act, const at::Tensor& u) {
  return {at::mul(v, gate_scale(u)), at::mul(at::mul(v, act), at::sigmoid(u.neg()))};
}

void bias_relu_(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& bias, bool relu,
                const at::Tensor& gate) {
  if (dst.device().is_cpu()) return cpu::bias_relu_(dst, src, bias, relu, gate);
  at::Tensor out = dst;
  at::add_out(out, src, bias.unsqueeze(1));
  if (relu) out.relu_();
  if (gate.defined()) out.mul_(gate_scale(gate));
}

void relu_grad_(const at::Tensor& dst, const at::Tensor& src, const std::optional<at::Tensor>& extra,
                const at::Tensor& act, bool relu, const at::Tensor& bias_grad, const at::Tensor& gate,
                const at::Tensor& gate_grad) {
  if (src.device().is_cpu()) return cpu::relu_grad_(dst, src, extra, act, relu, bias_grad, gate, gate_grad);
  at::Tensor v = extra.has_value() ? at::add(src, *extra) : src;
  if (gate.defined()) {
    auto [scaled, du] = gate_backward(v, act, gate);
    const_cast<at::Tensor&>(gate_grad).copy_(du);
    v = scaled;
  }
  if (relu) v = at::threshold_backward(v, act, 0);
  if (dst.defined() && !dst.is_same(v)) const_cast<at::Tensor&>(dst).copy_(v);
  at::sum_out(const_cast<at::Tensor&>(bias_grad), v, {1});
}

namespace {

// [B, G, w] <-> [G, B, w] view
at::Tensor swap_bg(const at::Tensor& t) { return t.transpose(0, 1); }

// a @ b into a new contiguous tensor.
at::Tensor product(const at::Tensor& a, const at::Tensor& b) {
  std::vector<int64_t> shape(a.sizes().begin(), a.sizes().end());
  shape.back() = b.size(-1);
  at::Tensor out = at::empty(shape, a.options());
  matmul_out(out, a, b);
  return out;
}

// Layer l's activation as a [G, B, out] view (the last one is stored [B, G, out]).
at::Tensor act_gm(const std::vector<at::Tensor>& acts, int64_t l) {
  return l + 1 == static_cast<int64_t>(acts.size()) ? swap_bg(acts[l]) : acts[l];
}

// The input of layer l >= 0 as [G, B, in] (not for a shared-input first layer).
at::Tensor input_gm(const at::Tensor& x, const std::vector<at::Tensor>& acts, int64_t l) {
  return l == 0 ? swap_bg(x) : act_gm(acts, l - 1);
}

}  // namespace

std::vector<at::Tensor> grouped_mlp(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                    const c10::List<bool>& relu, bool shared_input, const GateList& gates) {
  const Dims d = check_args(x, weights, biases, relu, shared_input);
  const std::vector<at::Tensor> gate = check_gates(gates, x, d);
  if (!any_defined(gate) && cpu::small_groups(x, weights, shared_input)) {
    return cpu::grouped_mlp_small(x, weights, biases, relu);
  }
  const int64_t L = static_cast<int64_t>(weights.size());
  auto gate_gm = [&](int64_t l) { return gate[l].defined() ? swap_bg(gate[l]) : at::Tensor(); };  // [G, B, out]
  std::vector<at::Tensor> acts;
  for (int64_t l = 0; l < L; ++l) {
    acts.push_back(l + 1 < L ? at::empty({d.G, d.B, d.width[l + 1]}, x.options())
                             : at::empty({d.B, d.G, d.width[l + 1]}, x.options()));
  }
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor w = unit_stride(weights[l]);
    const at::Tensor out = act_gm(acts, l);  // [G, B, out]
    if (l == 0 && shared_input) {  // one product over all groups: [B, in] @ [in, G*out0]
      const int64_t n = d.G * d.width[1];
      at::Tensor prod = L == 1 ? acts[0].view({d.B, n}) : at::empty({d.B, n}, x.options());
      matmul_out(prod, x, w.reshape({d.width[0], n}));
      bias_relu_(out, swap_bg(prod.view({d.B, d.G, d.width[1]})), biases[0], relu[0], gate_gm(0));
      continue;
    }
    const at::Tensor in = input_gm(x, acts, l);
    if (out.is_contiguous()) {  // an intermediate [G, B, out] activation
      matmul_out(out, in, w);
      bias_relu_(out, out, biases[l], relu[l], gate_gm(l));
    } else {  // the [B, G, out] output: the epilogue writes the product back batch-major
      bias_relu_(out, product(in, w), biases[l], relu[l], gate_gm(l));
    }
  }
  return acts;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
grouped_mlp_backward(const OptionalTensorList& grads, const at::Tensor& x, at::TensorList weights,
                     at::TensorList biases, at::TensorList activations, const c10::List<bool>& relu,
                     bool shared_input, bool input_grad, bool weight_grad, const GateList& gates) {
  const Dims d = check_args(x, weights, biases, relu, shared_input);
  const std::vector<at::Tensor> gate = check_gates(gates, x, d);
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(grads.size()) == L && static_cast<int64_t>(activations.size()) == L,
                    "grouped_mlp_backward: need one grad and one activation per layer, got ", grads.size(), " and ",
                    activations.size(), " for ", L, " layers");
  // N task gradients at once when the gradients carry a leading task dimension
  std::optional<int64_t> tasks;
  for (int64_t l = 0; l < L; ++l) {
    const std::optional<at::Tensor> gl = grads[l];
    if (gl.has_value() && !tasks) tasks = gl->dim() == 4 ? gl->size(0) : -1;
  }
  const bool task_dim = tasks.has_value() && *tasks >= 0;
  const int64_t N = task_dim ? *tasks : 1;
  std::vector<at::Tensor> acts;
  std::vector<std::optional<at::Tensor>> g_out(L);  // [N, *activation shape]
  for (int64_t l = 0; l < L; ++l) {
    const std::vector<int64_t> shape =
        l + 1 < L ? std::vector<int64_t>{d.G, d.B, d.width[l + 1]} : std::vector<int64_t>{d.B, d.G, d.width[l + 1]};
    TORCH_CHECK_VALUE(activations[l].sizes() == at::IntArrayRef(shape), "grouped_mlp_backward: activations[", l,
                      "] must be ", at::IntArrayRef(shape), ", got ", activations[l].sizes());
    acts.push_back(unit_stride(activations[l]));
    const std::optional<at::Tensor> gl = grads[l];
    if (gl.has_value()) {
      std::vector<int64_t> want(shape);
      if (task_dim) want.insert(want.begin(), N);
      TORCH_CHECK_VALUE(gl->sizes() == at::IntArrayRef(want), "grouped_mlp_backward: grads[", l, "] must be ",
                        at::IntArrayRef(want), task_dim ? " (N task gradients)" : "", ", got ", gl->sizes());
      TORCH_CHECK_TYPE(gl->scalar_type() == x.scalar_type(), "grouped_mlp_backward: grads[", l, "] dtype ",
                       gl->scalar_type(), " != x dtype ", x.scalar_type());
      g_out[l] = task_dim ? unit_stride(*gl) : unit_stride(*gl).unsqueeze(0);
    }
  }
  std::vector<at::Tensor> no_gate_grads;  // what an ungated layer returns: [0] tensors
  for (int64_t l = 0; l < L; ++l) no_gate_grads.push_back(at::empty({0}, x.options()));
  // the whole small stack per (row, group), per task
  if (N > 0 && !any_defined(gate) && cpu::small_groups(x, weights, shared_input)) {
    std::vector<at::Tensor> gx;
    std::vector<std::vector<at::Tensor>> gw(L), gb(L);
    for (int64_t k = 0; k < N; ++k) {
      std::vector<std::optional<at::Tensor>> g_k(L);
      for (int64_t l = 0; l < L; ++l) {
        if (g_out[l].has_value()) g_k[l] = (*g_out[l])[k];
      }
      auto [x_k, w_k, b_k] = cpu::grouped_mlp_small_backward(g_k, x, weights, acts, relu, input_grad);
      if (!weight_grad) {  // the whole-stack kernel computes them anyway; the contract is [0] tensors
        for (auto& w : w_k) w = at::empty({0}, x.options());
      }
      if (!task_dim) return {x_k, w_k, b_k, no_gate_grads};
      gx.push_back(x_k);
      for (int64_t l = 0; l < L; ++l) {
        gw[l].push_back(w_k[l]);
        gb[l].push_back(b_k[l]);
      }
    }
    std::vector<at::Tensor> grad_w, grad_b;
    for (int64_t l = 0; l < L; ++l) {
      grad_w.push_back(weight_grad ? at::stack(gw[l]) : at::empty({0}, x.options()));
      grad_b.push_back(at::stack(gb[l]));
    }
    return {at::stack(gx), grad_w, grad_b, no_gate_grads};
  }
  // task k's g_out as a [G, B, w] view
  auto g_out_gm = [&](int64_t l, int64_t k) { return l + 1 == L ? swap_bg((*g_out[l])[k]) : (*g_out[l])[k]; };
  // block-sparse N task gradients (task heads): only the live (task, group) products run
  const TaskBlocks blocks(g_out, N, d.G);
  std::vector<at::Tensor> grad_w, grad_b, grad_gate;
  for (int64_t l = 0; l < L; ++l) {
    std::vector<int64_t> shape(weights[l].sizes().begin(), weights[l].sizes().end());
    shape.insert(shape.begin(), N);
    grad_w.push_back(weight_grad ? blocks.new_output(shape, x.options()) : at::empty({0}, x.options()));
    grad_b.push_back(at::empty({N, d.G, d.width[l + 1]}, x.options()));
    grad_gate.push_back(gate[l].defined() ? at::empty({N, d.B, d.G, d.width[l + 1]}, x.options())
                                          : no_gate_grads[l]);
  }
  // layer l's gate logits and task k's gradient of them as [G, B, w] views (undefined: no gate)
  auto gate_gm = [&](int64_t l) { return gate[l].defined() ? swap_bg(gate[l]) : at::Tensor(); };
  auto gate_grad_gm = [&](int64_t l, int64_t k) {
    return gate[l].defined() ? swap_bg(grad_gate[l][k]) : at::Tensor();
  };
  std::vector<int64_t> x_shape(x.sizes().begin(), x.sizes().end());
  x_shape[0] = input_grad ? d.B : 0;
  x_shape.insert(x_shape.begin(), N);
  at::Tensor grad_x = blocks.new_output(x_shape, x.options());
  // Gradients of a layer's pre-activation output, [G, N, B, w] (one product over the groups
  // serves all tasks: rows (task, batch row)); task k's is the [G, B, w] slice [:, k]. For a
  // shared-input first layer, whose weight gradient is one [in, B] @ [B, G*w] product per task,
  // they are stored [N, B, G, w] (a permuted view).
  auto new_pre_grad = [&](int64_t l) {
    return l == 0 && shared_input ? at::empty({N, d.B, d.G, d.width[1]}, x.options()).permute({2, 0, 1, 3})
                                  : at::empty({d.G, N, d.B, d.width[l + 1]}, x.options());
  };
  auto task = [](const at::Tensor& g, int64_t k) { return g.select(1, k); };  // [G, B, w]

  // top layer: the incoming gradient, masked by its ReLU, plus its bias gradient, in one pass
  at::Tensor gy = new_pre_grad(L - 1);
  if (g_out[L - 1].has_value()) {
    for (int64_t k = 0; k < N; ++k) {
      relu_grad_(task(gy, k), g_out_gm(L - 1, k), std::nullopt, act_gm(acts, L - 1), relu[L - 1], grad_b[L - 1][k],
                 gate_gm(L - 1), gate_grad_gm(L - 1, k));
    }
  } else {
    gy.zero_();
    grad_b[L - 1].zero_();
    if (gate[L - 1].defined()) grad_gate[L - 1].zero_();
  }
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor w = unit_stride(weights[l]);
    if (l == 0 && shared_input) {
      const at::Tensor gy_rows = gy.permute({1, 2, 0, 3});  // [N, B, G, w], its storage order
      if (weight_grad) blocks.shared_weight_grads(grad_w[0], x, gy_rows);
      if (input_grad) blocks.shared_input_grads(grad_x, gy_rows, w);
      break;
    }
    if (weight_grad) blocks.weight_grads(grad_w[l], input_gm(x, acts, l), gy);
    if (l == 0) {  // grad_x [N, B, G, in]
      if (input_grad) blocks.first_input_grads(grad_x, gy, w);
      break;
    }
    const at::Tensor g_pre = blocks.input_grads(gy, w);  // [G, N, B, in]
    // layer l - 1's pre-activation gradient: its ReLU mask, its own output gradient and its bias
    // gradient fused in, in place unless it feeds a shared-input first layer
    const at::Tensor g_in = l == 1 && shared_input ? new_pre_grad(0) : g_pre;
    for (int64_t k = 0; k < N; ++k) {
      const std::optional<at::Tensor> extra =
          g_out[l - 1].has_value() ? std::optional<at::Tensor>(g_out_gm(l - 1, k)) : std::nullopt;
      relu_grad_(task(g_in, k), task(g_pre, k), extra, act_gm(acts, l - 1), relu[l - 1], grad_b[l - 1][k],
                 gate_gm(l - 1), gate_grad_gm(l - 1, k));
    }
    gy = g_in;
  }
  if (!task_dim) {
    grad_x = grad_x.squeeze(0);
    for (auto& g : grad_w) g = weight_grad ? g.squeeze(0) : g;
    for (auto& g : grad_b) g = g.squeeze(0);
    for (int64_t l = 0; l < L; ++l) grad_gate[l] = gate[l].defined() ? grad_gate[l].squeeze(0) : grad_gate[l];
  }
  return {grad_x, grad_w, grad_b, grad_gate};
}

TORCH_LIBRARY_IMPL(mtlk, CPU, m) {
  m.impl("grouped_mlp", &grouped_mlp);
  m.impl("grouped_mlp_backward", &grouped_mlp_backward);
}

}  // namespace mtlk
