// Autograd of mtlk::gate_mix, in C++ (registered at the Autograd key, for every device).
// Every MoE layer calls the op once per step; the Python custom-op autograd machinery cost
// about 0.1 ms per call, as much as the CPU kernel itself at a many-small-experts batch.
//
// The backward recomputes the gate probabilities from the logits (the kernels' choice) and
// calls mtlk::gate_mix_backward through the dispatcher, so torch.compile traces it through
// its fake kernel. The batched per-task backward (is_grads_batched: the legacy vmap) hands the
// kernel the physical [N, B, T, D] task gradients in one call instead, each row's gates and
// experts computed and read once for the N tasks, where the batching fallback would call the
// kernel once per task and stack the results. Fake and vmap (torch.func) rules stay in Python
// (mtlkernels/ops/_gate_mix_rules.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "legacy_batched.h"

namespace mtlk {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& experts, const at::Tensor& logits,
                                                const std::optional<at::Tensor>& mask, bool return_probs) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtlk::gate_mix", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const std::optional<at::Tensor>&, bool)>();
  return op.call(experts, logits, mask, return_probs);
}

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_probs,
                                                 const at::Tensor& experts, const at::Tensor& logits,
                                                 const std::optional<at::Tensor>& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtlk::gate_mix_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&)>();
  return op.call(grad_out, grad_probs, experts, logits, mask);
}

class GateMixFunction : public torch::autograd::Function<GateMixFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& experts, const at::Tensor& logits,
                               const std::optional<at::Tensor>& mask, bool return_probs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, probs] = call_forward(experts, logits, mask, return_probs);
    ctx->save_for_backward({experts, logits, mask.has_value() ? *mask : at::Tensor()});
    ctx->set_materialize_grads(false);  // probs usually get no gradient
    ctx->mark_non_differentiable(return_probs ? variable_list{} : variable_list{probs});
    return {out, probs};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& experts = saved[0];
    const at::Tensor& logits = saved[1];
    const std::optional<at::Tensor> mask = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    // one entry per forward argument: experts, logits, expert_mask, return_probs
    variable_list out(4);
    const at::Tensor& grad_out = grads[0];
    const at::Tensor& grad_probs = grads[1];
    if (!grad_out.defined() && !grad_probs.defined()) return out;
    if (const auto level = task_batch_level(grads, saved)) {  // N tasks in one kernel call
      const std::optional<at::Tensor> gp =
          grad_probs.defined() ? std::optional<at::Tensor>(task_physical(grad_probs)) : std::nullopt;
      const at::Tensor g = grad_out.defined() ? task_physical(grad_out)
                                              : at::zeros({gp->size(0), experts.size(0), logits.size(1), experts.size(2)},
                                                          experts.options());
      auto [ge, gl] = call_backward(g, gp, experts, logits, mask);
      out[0] = task_batched(ge, *level);
      out[1] = task_batched(gl, *level);
      return out;
    }
    // an output without a gradient contributes nothing: the kernels take zeros for grad_out
    // and None for grad_probs
    const at::Tensor g = grad_out.defined()
                             ? grad_out
                             : at::zeros({experts.size(0), logits.size(1), experts.size(2)}, experts.options());
    const std::optional<at::Tensor> gp = grad_probs.defined() ? std::optional<at::Tensor>(grad_probs) : std::nullopt;
    auto [grad_experts, grad_logits] = call_backward(g, gp, experts, logits, mask);
    out[0] = grad_experts;
    out[1] = grad_logits;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> gate_mix_autograd(const at::Tensor& experts, const at::Tensor& logits,
                                                     const std::optional<at::Tensor>& mask, bool return_probs) {
  variable_list outs = GateMixFunction::apply(experts, logits, mask, return_probs);
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, Autograd, m) { m.impl("gate_mix", &gate_mix_autograd); }

}  // namespace mtlk
