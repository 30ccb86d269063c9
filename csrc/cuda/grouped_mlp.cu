// Grouped MLP, CUDA registration: the device-generic driver of csrc/grouped_mlp.cpp runs its
// per-group products through cuBLAS (at::mm_out on strided views) and its epilogues as ATen
// elementwise ops on each group block.
#include <torch/library.h>

#include "grouped_mlp.h"

namespace mtlk {

TORCH_LIBRARY_IMPL(mtlk, CUDA, m) {
  m.impl("grouped_mlp", &grouped_mlp);
  m.impl("grouped_mlp_backward", &grouped_mlp_backward);
}

}  // namespace mtlk
