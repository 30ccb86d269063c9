// Argument checks of the gate-mixture ops, shared by the CPU and CUDA launchers so a
// direct C++ caller gets the same messages as the Python front end.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

namespace mtlk {

inline void check_gate_mix_args(const at::Tensor& experts, const at::Tensor& logits,
                                const std::optional<at::Tensor>& expert_mask) {
  TORCH_CHECK_VALUE(experts.dim() == 3, "gate_mix: experts must be [B, X, D], got ", experts.dim(),
                    " dims");
  TORCH_CHECK_VALUE(logits.dim() == 3, "gate_mix: logits must be [B, T, X], got ", logits.dim(),
                    " dims");
  TORCH_CHECK_VALUE(logits.size(0) == experts.size(0), "gate_mix: logits batch ", logits.size(0),
                    " != experts batch ", experts.size(0));
  TORCH_CHECK_VALUE(logits.size(2) == experts.size(1), "gate_mix: logits has ", logits.size(2),
                    " experts in its last dim but experts has ", experts.size(1));
  TORCH_CHECK_TYPE(at::isFloatingType(experts.scalar_type()),
                   "gate_mix: experts must be floating point, got ", experts.scalar_type());
  TORCH_CHECK_TYPE(logits.scalar_type() == experts.scalar_type(), "gate_mix: logits dtype ",
                   logits.scalar_type(), " != experts dtype ", experts.scalar_type());
  TORCH_CHECK(logits.device() == experts.device(), "gate_mix: logits on ", logits.device(),
              " but experts on ", experts.device());
  if (expert_mask.has_value()) {
    const at::Tensor& m = *expert_mask;
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, "gate_mix: expert_mask must be bool, got ",
                     m.scalar_type());
    TORCH_CHECK_VALUE(m.dim() == 2 && m.size(0) == logits.size(1) && m.size(1) == logits.size(2),
                      "gate_mix: expert_mask must be [T, X] = [", logits.size(1), ", ",
                      logits.size(2), "], got ", m.sizes());
    TORCH_CHECK(m.device() == experts.device(), "gate_mix: expert_mask on ", m.device(),
                " but experts on ", experts.device());
  }
}

// grad_out is [B, T, D], or [N, B, T, D] for N task gradients at once (the per-task backward):
// the outputs then gain the same leading N.
inline void check_gate_mix_backward_args(const at::Tensor& grad_out,
                                         const std::optional<at::Tensor>& grad_probs,
                                         const at::Tensor& experts, const at::Tensor& logits,
                                         const std::optional<at::Tensor>& expert_mask) {
  check_gate_mix_args(experts, logits, expert_mask);
  const int64_t lead = grad_out.dim() - 3;  // 1 with a task dimension
  TORCH_CHECK_VALUE((lead == 0 || lead == 1) && grad_out.size(lead) == experts.size(0) &&
                        grad_out.size(lead + 1) == logits.size(1) && grad_out.size(lead + 2) == experts.size(2),
                    "gate_mix_backward: grad_out must be [B, T, D] or [N, B, T, D], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == experts.scalar_type(),
                   "gate_mix_backward: grad_out dtype ", grad_out.scalar_type(),
                   " != experts dtype ", experts.scalar_type());
  TORCH_CHECK(grad_out.device() == experts.device(), "gate_mix_backward: grad_out on ",
              grad_out.device(), " but experts on ", experts.device());
  if (grad_probs.has_value()) {
    std::vector<int64_t> want(grad_out.sizes().begin(), grad_out.sizes().begin() + lead);
    want.insert(want.end(), logits.sizes().begin(), logits.sizes().end());
    TORCH_CHECK_VALUE(grad_probs->sizes() == at::IntArrayRef(want),
                      "gate_mix_backward: grad_probs must have the shape of logits (with grad_out's leading N) ",
                      at::IntArrayRef(want), ", got ", grad_probs->sizes());
    TORCH_CHECK_TYPE(grad_probs->scalar_type() == logits.scalar_type(),
                     "gate_mix_backward: grad_probs dtype ", grad_probs->scalar_type(),
                     " != logits dtype ", logits.scalar_type());
    TORCH_CHECK(grad_probs->device() == experts.device(), "gate_mix_backward: grad_probs on ",
                grad_probs->device(), " but experts on ", experts.device());
  }
}

}  // namespace mtlk
