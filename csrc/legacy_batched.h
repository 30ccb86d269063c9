// The per-task backward, torch.autograd.grad(..., is_grads_batched=True), runs the autograd
// kernels under the legacy vmap: their incoming gradients are BatchedTensors with the task
// dimension hidden. Per-op batching rules then loop over the tasks and stack the results; these
// helpers take the physical tensor out (tasks first) so that a backward can write its own task-
// batched products, reading the saved activations once, and hand the results back batched.
#pragma once

#include <ATen/LegacyBatchedTensorImpl.h>

#include <optional>
#include <vector>

namespace mtlk {

// The level of the one legacy vmap that batches `t`; nullopt if `t` is undefined, not batched,
// or batched at more than one level (nested per-task backward passes).
inline std::optional<int64_t> task_batch_level(const at::Tensor& t) {
  if (!t.defined() || !at::isBatchedTensor(t)) return std::nullopt;
  const auto bdims = at::maybeGetBatchedImpl(t)->bdims();
  if (bdims.size() != 1) return std::nullopt;
  return bdims[0].level();
}

// The level of the one legacy vmap that batches every defined gradient of `grads` (and none of
// the `saved` tensors): the case a task-batched backward handles; else nullopt.
inline std::optional<int64_t> task_batch_level(const std::vector<at::Tensor>& grads,
                                               const std::vector<at::Tensor>& saved) {
  std::optional<int64_t> level;
  for (const auto& g : grads) {
    if (!g.defined()) continue;
    const auto l = task_batch_level(g);
    if (!l || (level && *level != *l)) return std::nullopt;
    level = l;
  }
  for (const auto& t : saved) {
    if (t.defined() && at::isBatchedTensor(t)) return std::nullopt;
  }
  return level;
}

// The physical tensor of a batched `t`, the task dimension first: [n, *t.sizes()].
inline at::Tensor task_physical(const at::Tensor& t) {
  const auto* impl = at::maybeGetBatchedImpl(t);
  return impl->value().movedim(impl->bdims()[0].dim(), 0);
}

// `phys` [n, ...] as a tensor batched over its first dimension at `level`.
inline at::Tensor task_batched(const at::Tensor& phys, int64_t level) {
  return at::makeBatched(phys, at::BatchDims{at::BatchDim(level, 0)});
}

}  // namespace mtlk
