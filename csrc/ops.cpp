// The one TORCH_LIBRARY(mtlk) of the project: every op schema lives here. Kernels
// register per dispatch key in csrc/cpu/ and csrc/cuda/; fake (meta) and vmap rules are
// registered from Python in mtlkernels/ops/; autograd is C++ for gate_mix and grouped_mlp
// (csrc/*_autograd.cpp), Python for the rest.
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

  // Per-task gradient algebra over a list of parameter blocks, block k = [T, *shape_k]
  // (row t = task t's gradient of that parameter), never concatenated.
  // gram: G[i, j] = sum_k <block_k[i], block_k[j]>, accumulated and returned in float64 [T, T].
  m.def("gram(Tensor[] blocks) -> Tensor");
  // block_grams: one [T, T] float64 Gram per block -> [K, T, T] (per-layer methods).
  m.def("block_grams(Tensor[] blocks) -> Tensor");
  // combine_: out_k (+)= sum_t weights[t] * block_k[t], in place (out_k = a parameter's .grad);
  // accumulate=false overwrites out_k (a fresh .grad: no zero fill, no read).
  // weights [T] (any float dtype; applied in float64 then rounded to out's dtype).
  m.def("combine_(Tensor[] blocks, Tensor weights, Tensor(a!)[] out, bool accumulate=True) -> ()");

  // T x T solvers, batched over N problems, float64, no host synchronisation.
  // gram [N, T, T] symmetric PSD. Returned weights [N, T] combine the task gradients: d = J^T w.
  // pcgrad: order [N, T, T] int64, order[n, i] a permutation of 0..T-1 giving the order in which
  //   task i is projected against the others (i itself is skipped). Sum convention (w sums
  //   to T when nothing conflicts).
  m.def("pcgrad_weights(Tensor gram, Tensor order) -> Tensor");
  // gradvac: as pcgrad with cosine targets target [N, T, T] (phihat) and EMA rate beta;
  //   returns (weights [N, T], updated target [N, T, T]).
  m.def("gradvac_weights(Tensor gram, Tensor order, Tensor target, float beta, bool every_pair) -> (Tensor, Tensor)");
  // mgda: min-norm point of the convex hull, w in the simplex minimising w^T G w (exact for T = 2,
  //   else best pair start + Frank-Wolfe, at most max_iter iterations, stop when the step < tol).
  m.def("mgda_weights(Tensor gram, int max_iter, float tol) -> Tensor");
  // min_norm: the same problem solved exactly (Wolfe's minimum-norm-point algorithm).
  m.def("min_norm_weights(Tensor gram) -> Tensor");
  // peltr: PE-LTR PECsolver with lower bounds [N, T] (c >= 0, sum c <= 1): relaxed KKT solve then
  //   projection onto {w >= c, sum w = 1}.
  m.def("peltr_weights(Tensor gram, Tensor lower_bounds) -> Tensor");
  // dual_cone: for each problem n and bound vector k, v = argmin v^T G v s.t. v >= bounds[n, k]
  // (the weights of the projection of J^T u onto the dual cone of the rows of J; UPGrad, DualProj).
  // gram [N, T, T], bounds [N, K, T] -> [N, K, T].
  m.def("dual_cone_weights(Tensor gram, Tensor bounds) -> Tensor");
  // cagrad: CAGrad's dual w in the simplex minimising b^T w + a |J^T w| (b = G 1 / T, a = c |g0|).
  m.def("cagrad_weights(Tensor gram, float c) -> Tensor");

  // Counter-based random keys (csrc/include/mtlk/counter_keys.h): [n] non-negative int64, key i
  // of draw `draw` (0-dim int64) of the stream `seed` (0-dim int64); the projection orders of
  // PCGrad / GradVac and RLW's weights. Nothing is read back to the host on a device.
  m.def("counter_keys(Tensor seed, Tensor draw, int n) -> Tensor");

  // Grouped MLP (csrc/grouped_mlp.h): G parallel MLPs, activations [B, G, width].
  // x [B, in] with shared_input (weights[0] [in, G, out0]) or [B, G, in] (weights[0] [G, in, out0]);
  // weights[l >= 1] [G, in_l, out_l]; biases[l] [G, out_l]; relu[l] = ReLU after layer l.
  // gates: None, or per layer None or [B, G, out_l] PPNet gate logits u (the layer's output is
  // multiplied by 2 sigmoid(u)).
  // Returns every layer's (post-ReLU, gated) activation: [G, B, out_l] for l < L-1 (group-major),
  // then the output [B, G, out].
  m.def(
      "grouped_mlp(Tensor x, Tensor[] weights, Tensor[] biases, bool[] relu, bool shared_input, "
      "Tensor?[]? gates=None) -> Tensor[]");
  // grads[l] = gradient of activation l or None. Returns (grad_x or [0]-sized when !input_grad,
  // grad weights or [0]-sized ones when !weight_grad, grad biases, grad gate logits or [0]-sized
  // ones for ungated layers).
  m.def(
      "grouped_mlp_backward(Tensor?[] grads, Tensor x, Tensor[] weights, Tensor[] biases, Tensor[] activations, "
      "bool[] relu, bool shared_input, bool input_grad, bool weight_grad=True, Tensor?[]? gates=None) "
      "-> (Tensor, Tensor[], Tensor[], Tensor[])");
}
