// Grouped MLP: G parallel MLPs (the experts of an MoE level, the towers of the tasks), read
// from and written to batch-major [B, G, width] tensors, with group-major intermediates.
// Bias and ReLU, and in the backward the ReLU mask and the bias-gradient column sums, are
// fused into one pass over each activation.
//
//   x            [B, in]  (shared_input: every group reads the same rows) or [B, G, in]
//   weights[0]   [in, G, out0] if shared_input (one [B, in] @ [in, G*out0] product), else [G, in, out0]
//   weights[l]   [G, in_l, out_l] for l >= 1, in_l = out_{l-1}
//   biases[l]    [G, out_l] (a layer without bias passes zeros)
//   relu[l]      ReLU after layer l
//   gates[l]     optional [B, G, out_l] gate logits u (PPNet, ALGORITHMS.md 1.10): layer l's
//                output becomes relu?(x W + b) * 2 sigmoid(u), in the same epilogue pass; the
//                backward returns the gradient of u (division-free: dL/du = dy * y * sigmoid(-u),
//                y the stored gated output)
//   activations  every layer's (gated) post-ReLU output: [G, B, out_l] (group-major, what the next
//                layer's products read) for l < L-1, and the MLP's output [B, G, out] last.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace mtlk {

using OptionalTensorList = c10::List<std::optional<at::Tensor>>;
// The op's gates argument: none at all, or one entry per layer (None = that layer ungated).
using GateList = std::optional<OptionalTensorList>;

std::vector<at::Tensor> grouped_mlp(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                    const c10::List<bool>& relu, bool shared_input, const GateList& gates = {});

// grads[l] = gradient of activations[l] (None where that output was not used), or N task
// gradients at once, [N, *activations[l].shape] (the per-task backward: every product over
// the groups and every fused epilogue reads the activations for all N tasks). Returns
// (grad_x, or a [0, ...] tensor when !input_grad; grad weights, or [0] tensors when !weight_grad
// (their products skipped: what the per-task backward to a representation or to other
// parameters asks); grad biases; grad gate logits [B, G, out_l], or a [0] tensor for an ungated
// layer), each with the leading N when the gradients have it.
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
grouped_mlp_backward(const OptionalTensorList& grads, const at::Tensor& x, at::TensorList weights,
                     at::TensorList biases, at::TensorList activations, const c10::List<bool>& relu,
                     bool shared_input, bool input_grad, bool weight_grad = true, const GateList& gates = {});

// Fused epilogues over [G, R, C] blocks (unit column stride, any group/row strides; a
// [B, G, w] activation is passed as its transpose(0, 1) view), bias [G, C], gate logits u
// [G, R, C] or undefined (no gate):
// dst = relu?(src + bias) * 2 sigmoid(u) (dst may alias src).
void bias_relu_(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& bias, bool relu,
                const at::Tensor& gate);
// v = src (+ extra); with a gate, gate_grad = v * act * sigmoid(-u) and v = v * 2 sigmoid(u);
// v = v * (act > 0) if relu; dst = v (dst may alias src; undefined dst = no write);
// bias_grad [G, C] (contiguous) = sums of v over R.
void relu_grad_(const at::Tensor& dst, const at::Tensor& src, const std::optional<at::Tensor>& extra,
                const at::Tensor& act, bool relu, const at::Tensor& bias_grad, const at::Tensor& gate,
                const at::Tensor& gate_grad);

// The PPNet gate in ATen ops (the device-generic epilogues and the batchable autograd path; the
// CPU kernel fuses the same math): the scale 2 sigmoid(u), and the backward through act = y * s
// for an incoming gradient v: (v * s, dL/du = v * act * sigmoid(-u)).
at::Tensor gate_scale(const at::Tensor& u);
std::pair<at::Tensor, at::Tensor> gate_backward(const at::Tensor& v, const at::Tensor& act, const at::Tensor& u);

// out = a @ b for two 2-D or two 3-D (batched) operands; out contiguous.
void matmul_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

namespace cpu {
// out = a @ b on oneDNN when that is the faster library here (csrc/cpu/matmul.cpp); false
// (nothing done) otherwise.
bool onednn_matmul_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// The library matmul_out runs large float32 products on here: "onednn" or "mkl".
const char* float_products_library();
void bias_relu_(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& bias, bool relu,
                const at::Tensor& gate);
void relu_grad_(const at::Tensor& dst, const at::Tensor& src, const std::optional<at::Tensor>& extra,
                const at::Tensor& act, bool relu, const at::Tensor& bias_grad, const at::Tensor& gate,
                const at::Tensor& gate_grad);
// Small per-group stacks (towers, inner-level gates; csrc/cpu/grouped_mlp_small.cpp): whole
// stack per (row, group), same layouts and contract as grouped_mlp / grouped_mlp_backward
// without gates (gated stacks run the driver's path).
bool small_groups(const at::Tensor& x, at::TensorList weights, bool shared_input);
std::vector<at::Tensor> grouped_mlp_small(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                          const c10::List<bool>& relu);
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> grouped_mlp_small_backward(
    const std::vector<std::optional<at::Tensor>>& grads, const at::Tensor& x, at::TensorList weights,
    at::TensorList activations, const c10::List<bool>& relu, bool input_grad);
}  // namespace cpu

}  // namespace mtlk
