// Argument checks of mtlk::counter_keys, shared by its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace mtlk {

inline void check_counter_keys_args(const at::Tensor& seed, const at::Tensor& draw, int64_t n) {
  TORCH_CHECK_VALUE(n >= 0, "counter_keys: n must be >= 0, got ", n);
  for (const auto* t : {&seed, &draw}) {
    TORCH_CHECK_VALUE(t->dim() == 0 && t->scalar_type() == at::kLong, "counter_keys: ",
                      t == &seed ? "seed" : "draw", " must be a 0-dim int64 tensor, got ", t->scalar_type(), " ",
                      t->sizes());
  }
  TORCH_CHECK(seed.device() == draw.device(), "counter_keys: seed on ", seed.device(), " but draw on ", draw.device());
}

}  // namespace mtlk
