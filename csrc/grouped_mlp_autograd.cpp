// Autograd of mtlk::grouped_mlp, in C++ (registered at the Autograd key, for every device):
// a small-expert model step calls the op a few times per layer stack, and the Python
// custom-op autograd machinery cost more than the kernels at serving and small batch sizes.
//
// The backward calls mtlk::grouped_mlp_backward through the dispatcher (so torch.compile
// traces it through its fake kernel). Under the legacy vmap of
// torch.autograd.grad(..., is_grads_batched=True) (per-task gradients in mtlkernels.balance)
// the incoming gradients are batched tensors, which cannot be looped through an op with
// tensor-list arguments: the backward op is called once with the physical [N, ...] task
// gradients instead (its fused epilogues and group products serve all N tasks). Nested vmaps
// fall back to matmul on the batched tensors, which batches op by op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "grouped_mlp.h"
#include "legacy_batched.h"

namespace mtlk {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Grads = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The gate logits per layer (undefined = ungated; empty = no gates) from the gated layers' ones.
std::vector<at::Tensor> per_layer(at::TensorList gated, at::IntArrayRef gated_layers, int64_t L) {
  std::vector<at::Tensor> out(gated.empty() ? 0 : L);
  for (size_t i = 0; i < gated.size(); ++i) out[gated_layers[i]] = gated[i];
  return out;
}

// The op's gates argument from the per-layer list.
GateList gate_list(const std::vector<at::Tensor>& gates) {
  if (gates.empty()) return std::nullopt;
  OptionalTensorList out;
  for (const auto& g : gates) out.push_back(g.defined() ? std::optional<at::Tensor>(g) : std::nullopt);
  return out;
}

std::vector<at::Tensor> call_forward(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                     const c10::List<bool>& relu, bool shared_input, const GateList& gates) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtlk::grouped_mlp", "")
                       .typed<std::vector<at::Tensor>(const at::Tensor&, at::TensorList, at::TensorList,
                                                      const c10::List<bool>&, bool, const GateList&)>();
  return op.call(x, weights, biases, relu, shared_input, gates);
}

Grads call_backward(const OptionalTensorList& grads, const at::Tensor& x, at::TensorList weights,
                    at::TensorList biases, at::TensorList acts, const c10::List<bool>& relu, bool shared_input,
                    bool input_grad, bool weight_grad, const GateList& gates) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtlk::grouped_mlp_backward", "")
                       .typed<Grads(const OptionalTensorList&, const at::Tensor&, at::TensorList, at::TensorList,
                                    at::TensorList, const c10::List<bool>&, bool, bool, bool, const GateList&)>();
  return op.call(grads, x, weights, biases, acts, relu, shared_input, input_grad, weight_grad, gates);
}

// The backward with batchable ops only (matmul over [..., G, B, w] views); grads[l] may be
// undefined, gates[l] undefined for an ungated layer (or gates empty). Fills grad_x (if
// input_grad), grad_w, grad_b, grad_gate (gated layers).
void batchable_backward(const variable_list& grads, const at::Tensor& x, const std::vector<at::Tensor>& weights,
                        const std::vector<at::Tensor>& acts, const std::vector<at::Tensor>& gates,
                        const c10::List<bool>& relu, bool shared_input, bool input_grad, at::Tensor& grad_x,
                        std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b,
                        std::vector<at::Tensor>& grad_gate) {
  const int64_t L = static_cast<int64_t>(weights.size());
  // activations and their gradients as [..., G, B, w]; the last is stored [..., B, G, w]
  auto group_major = [&](const at::Tensor& t, int64_t l) { return l == L - 1 ? t.transpose(-3, -2) : t; };
  at::Tensor g_act = group_major(grads[L - 1].defined() ? grads[L - 1] : at::zeros_like(acts[L - 1]), L - 1);
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor act = group_major(acts[l], l);
    if (!gates.empty() && gates[l].defined()) {  // act = y * 2 sigmoid(u)
      auto [scaled, du] = gate_backward(g_act, act, gates[l].transpose(0, 1));
      grad_gate[l] = du.transpose(-3, -2);
      g_act = scaled;
    }
    const at::Tensor g_pre = relu[l] ? at::mul(g_act, at::gt(act, 0).to(g_act.scalar_type())) : g_act;
    grad_b[l] = g_pre.sum(-2);
    const at::Tensor& w = weights[l];
    if (l == 0 && shared_input) {  // [B, in] @ [in, G*out]
      const at::Tensor bg = g_pre.transpose(-3, -2);  // [..., B, G, out]
      std::vector<int64_t> flat_shape(bg.sizes().begin(), bg.sizes().end() - 2);
      flat_shape.push_back(-1);
      const at::Tensor flat = bg.reshape(flat_shape);
      std::vector<int64_t> w_shape(flat.sizes().begin(), flat.sizes().end() - 2);
      w_shape.insert(w_shape.end(), w.sizes().begin(), w.sizes().end());
      grad_w[l] = at::matmul(x.transpose(-2, -1), flat).reshape(w_shape);
      if (input_grad) grad_x = at::matmul(flat, w.reshape({w.size(0), -1}).transpose(0, 1));
      return;
    }
    const at::Tensor in = l == 0 ? x.transpose(-3, -2) : group_major(acts[l - 1], l - 1);
    grad_w[l] = at::matmul(in.transpose(-2, -1), g_pre);
    const at::Tensor g_in = at::matmul(g_pre, w.transpose(-2, -1));  // [..., G, B, in]
    if (l == 0) {
      if (input_grad) grad_x = g_in.transpose(-3, -2);
      return;
    }
    g_act = grads[l - 1].defined() ? at::add(g_in, grads[l - 1]) : g_in;
  }
}

class GroupedMLPFunction : public torch::autograd::Function<GroupedMLPFunction> {
 public:
  // gated: the gate logits of the layers gated_layers (autograd takes no undefined tensors)
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights,
                               at::TensorList biases, at::TensorList gated, const std::vector<int64_t>& gated_layers,
                               const c10::List<bool>& relu, bool shared_input) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const int64_t L = static_cast<int64_t>(weights.size());
    std::vector<at::Tensor> acts =
        call_forward(x, weights, biases, relu, shared_input, gate_list(per_layer(gated, gated_layers, L)));
    std::vector<at::Tensor> saved{x};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), biases.begin(), biases.end());
    saved.insert(saved.end(), gated.begin(), gated.end());
    ctx->saved_data["gated_layers"] = gated_layers;
    saved.insert(saved.end(), acts.begin(), acts.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["shared_input"] = shared_input;
    ctx->set_materialize_grads(false);  // intermediate activations usually get no gradient
    return acts;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const c10::List<bool> relu = ctx->saved_data["relu"].toBoolList();
    const bool shared_input = ctx->saved_data["shared_input"].toBool();
    const int64_t L = static_cast<int64_t>(relu.size());
    const std::vector<int64_t> gated_layers = ctx->saved_data["gated_layers"].toIntVector();
    const int64_t n_gated = static_cast<int64_t>(gated_layers.size());
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const std::vector<at::Tensor> weights(saved.begin() + 1, saved.begin() + 1 + L);
    const std::vector<at::Tensor> biases(saved.begin() + 1 + L, saved.begin() + 1 + 2 * L);
    const std::vector<at::Tensor> gated(saved.begin() + 1 + 2 * L, saved.begin() + 1 + 2 * L + n_gated);
    const std::vector<at::Tensor> acts(saved.begin() + 1 + 2 * L + n_gated, saved.end());
    const std::vector<at::Tensor> gates = per_layer(gated, gated_layers, L);
    const GateList gate_arg = gate_list(gates);
    // one entry per forward argument: x, each weight, each bias, each gated layer's logits,
    // gated_layers, relu, shared_input
    variable_list out(1 + 2 * L + n_gated + 3);
    bool any = false, batched = false;
    for (const auto& g : grads) {
      any |= g.defined();
      batched |= g.defined() && at::isBatchedTensor(g);
    }
    if (!any) return out;
    const bool input_grad = ctx->needs_input_grad(0);
    // the weights' products are skipped when autograd asks for none of them (a per-task backward to
    // a representation, or to parameters upstream of this op)
    bool weight_grad = false;
    for (int64_t l = 0; l < L; ++l) weight_grad = weight_grad || ctx->needs_input_grad(1 + l);
    at::Tensor grad_x;
    std::vector<at::Tensor> grad_w(L), grad_b(L), grad_gate(L);
    const std::optional<int64_t> level = batched ? task_batch_level(grads, saved) : std::nullopt;
    if (level) {  // N task gradients: one call of the fused backward on the physical tensors
      OptionalTensorList g_opt;
      for (const auto& g : grads) g_opt.push_back(g.defined() ? std::optional<at::Tensor>(task_physical(g)) : std::nullopt);
      std::tie(grad_x, grad_w, grad_b, grad_gate) =
          call_backward(g_opt, x, weights, biases, acts, relu, shared_input, input_grad, weight_grad, gate_arg);
      if (input_grad) grad_x = task_batched(grad_x, *level);
      for (int64_t l = 0; l < L; ++l) {
        if (weight_grad) grad_w[l] = task_batched(grad_w[l], *level);
        grad_b[l] = task_batched(grad_b[l], *level);
        if (!gates.empty() && gates[l].defined()) grad_gate[l] = task_batched(grad_gate[l], *level);
      }
    } else if (batched) {
      batchable_backward(grads, x, weights, acts, gates, relu, shared_input, input_grad, grad_x, grad_w, grad_b,
                         grad_gate);
    } else {
      OptionalTensorList g_opt;
      for (const auto& g : grads) g_opt.push_back(g.defined() ? std::optional<at::Tensor>(g) : std::nullopt);
      std::tie(grad_x, grad_w, grad_b, grad_gate) =
          call_backward(g_opt, x, weights, biases, acts, relu, shared_input, input_grad, weight_grad, gate_arg);
    }
    if (input_grad) out[0] = grad_x;
    for (int64_t l = 0; l < L; ++l) {
      if (weight_grad) out[1 + l] = grad_w[l];
      out[1 + L + l] = grad_b[l];
    }
    for (int64_t i = 0; i < n_gated; ++i) {
      if (ctx->needs_input_grad(1 + 2 * L + i)) out[1 + 2 * L + i] = grad_gate[gated_layers[i]];
    }
    return out;
  }
};

std::vector<at::Tensor> grouped_mlp_autograd(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                             const c10::List<bool>& relu, bool shared_input, const GateList& gates) {
  std::vector<at::Tensor> gated;
  std::vector<int64_t> gated_layers;
  if (gates.has_value()) {
    for (size_t l = 0; l < gates->size(); ++l) {
      const std::optional<at::Tensor> g = (*gates)[l];
      if (!g.has_value()) continue;
      gated.push_back(*g);
      gated_layers.push_back(static_cast<int64_t>(l));
    }
  }
  // an at::TensorList, which autograd counts as one input per tensor (a std::vector would be one
  // non-differentiable argument)
  return GroupedMLPFunction::apply(x, weights, biases, at::TensorList(gated), gated_layers, relu, shared_input);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, Autograd, m) { m.impl("grouped_mlp", &grouped_mlp_autograd); }

}  // namespace mtlk
