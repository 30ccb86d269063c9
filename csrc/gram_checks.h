// Argument checks of the per-task gradient algebra ops, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace mtlk {

// Blocks [T, ...] of one device and a floating dtype, all with the same T; returns T.
inline int64_t check_blocks(at::TensorList blocks, const char* op) {
  TORCH_CHECK_VALUE(!blocks.empty(), op, ": blocks is empty; pass one [T, ...] tensor per parameter");
  const int64_t T = blocks[0].dim() > 0 ? blocks[0].size(0) : -1;
  for (size_t k = 0; k < blocks.size(); ++k) {
    const at::Tensor& b = blocks[k];
    TORCH_CHECK_VALUE(b.dim() >= 1 && b.size(0) == T, op, ": blocks[", k, "] must be [T = ", T,
                      ", ...], got ", b.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(b.scalar_type()), op, ": blocks[", k,
                     "] must be floating point, got ", b.scalar_type());
    TORCH_CHECK(b.device() == blocks[0].device(), op, ": blocks[", k, "] is on ", b.device(),
                " but blocks[0] is on ", blocks[0].device());
  }
  TORCH_CHECK_VALUE(T >= 1, op, ": blocks have T = ", T, " tasks; need at least one");
  return T;
}

inline int64_t check_combine(at::TensorList blocks, const at::Tensor& weights, at::TensorList out) {
  const int64_t T = check_blocks(blocks, "combine_");
  TORCH_CHECK_VALUE(weights.dim() == 1 && weights.size(0) == T, "combine_: weights must be [T] = [", T,
                    "], got ", weights.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(weights.scalar_type()), "combine_: weights must be floating point, got ",
                   weights.scalar_type());
  TORCH_CHECK_VALUE(out.size() == blocks.size(), "combine_: out has ", out.size(), " tensors for ",
                    blocks.size(), " blocks");
  for (size_t k = 0; k < blocks.size(); ++k) {
    TORCH_CHECK_VALUE(out[k].numel() * T == blocks[k].numel(), "combine_: out[", k, "] has ", out[k].numel(),
                      " elements but blocks[", k, "] holds ", blocks[k].numel() / T, " per task");
    TORCH_CHECK_TYPE(at::isFloatingType(out[k].scalar_type()), "combine_: out[", k,
                     "] must be floating point, got ", out[k].scalar_type());
    TORCH_CHECK(out[k].device() == blocks[k].device(), "combine_: out[", k, "] is on ", out[k].device(),
                " but blocks[", k, "] is on ", blocks[k].device());
  }
  return T;
}

}  // namespace mtlk
