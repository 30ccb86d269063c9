// The matrix products of grouped_mlp's backward over N task gradients, block by block: when
// whole (task, group) blocks of the gradients are zero (the per-task backward through task
// heads: task t's loss reaches tower t only), only the live blocks' products run, into
// zero-filled outputs. Layouts as in grouped_mlp.h; gy is a layer's pre-activation gradient
// [G, N, B, w] (a shared-input first layer's: [N, B, G, w] storage, see grouped_mlp.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace mtlk {

class TaskBlocks {
 public:
  // g_out[l]: layer l's output gradients with the leading N (or absent). The live blocks are
  // read on the host, so only on the CPU; elsewhere (reading back would synchronise a device),
  // for N = 1 or G = 1, or when every block is live, every product runs dense.
  TaskBlocks(const std::vector<std::optional<at::Tensor>>& g_out, int64_t N, int64_t G);

  bool sparse() const { return !live_.empty(); }
  bool alive(int64_t k, int64_t g) const { return live_.empty() || live_[k * G_ + g]; }
  // A new output: zero-filled when sparse (the dead blocks are never written), else uninitialised.
  at::Tensor new_output(at::IntArrayRef shape, const at::TensorOptions& options) const;

  // grad_w [N, G, in, w] = in[g]^T @ gy[g, k] for each task k, group g; in [G, B, in].
  void weight_grads(const at::Tensor& grad_w, const at::Tensor& in, const at::Tensor& gy) const;
  // A shared-input first layer: grad_w [N, in, G, w] = x^T @ gy_rows[k] (gy_rows [N, B, G, w]).
  void shared_weight_grads(const at::Tensor& grad_w, const at::Tensor& x, const at::Tensor& gy_rows) const;
  // grad_x [N, B, in] = sum_g gy_rows[k, :, g] @ w[:, g]^T (w [in, G, w_out]).
  void shared_input_grads(const at::Tensor& grad_x, const at::Tensor& gy_rows, const at::Tensor& w) const;
  // A per-group first layer: grad_x [N, B, G, in], block (k, g) = gy[g, k] @ w[g]^T.
  void first_input_grads(const at::Tensor& grad_x, const at::Tensor& gy, const at::Tensor& w) const;
  // A later layer's input gradient: [G, N, B, in] with block (g, k) = gy[g, k] @ w[g]^T.
  at::Tensor input_grads(const at::Tensor& gy, const at::Tensor& w) const;

 private:
  bool group_live(int64_t g) const;

  int64_t N_, G_;
  std::vector<char> live_;  // live_[k * G + g]; empty: every block live
};

}  // namespace mtlk
