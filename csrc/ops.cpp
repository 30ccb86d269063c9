// The one TORCH_LIBRARY(mtlk) of the project: every op schema lives here. Kernels
// register per dispatch key in csrc/cpu/ and csrc/cuda/; autograd, fake (meta) and
// vmap rules are registered from Python in mtlkernels/ops/.
#include <torch/library.h>

TORCH_LIBRARY(mtlk, m) {
  // Gate mixture: out[b, t, :] = sum_x softmax(logits[b, t, :] | mask[t, :])[x] * experts[b, x, :].
  // experts [B, X, D], logits [B, T, X], expert_mask [T, X] bool (true = task t sees expert x).
  // Returns (out [B, T, D], probs [B, T, X] if return_probs else [0, T, X]).
  m.def(
      "gate_mix(Tensor experts, Tensor logits, Tensor? expert_mask, bool return_probs) "
      "-> (Tensor, Tensor)");
  // Returns (grad_experts [B, X, D], grad_logits [B, T, X]); probabilities are recomputed.
  m.def(
      "gate_mix_backward(Tensor grad_out, Tensor? grad_probs, Tensor experts, Tensor logits, "
      "Tensor? expert_mask) -> (Tensor, Tensor)");
}
