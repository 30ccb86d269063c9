// Counter-based random keys, CPU kernel (the math in csrc/include/mtlk/counter_keys.h): one
// call instead of the ~40 small tensor ops of the reference, which cost ~110 us per draw.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "counter_keys_checks.h"
#include "mtlk/counter_keys.h"

namespace mtlk {
namespace {

at::Tensor counter_keys_cpu(const at::Tensor& seed, const at::Tensor& draw, int64_t n) {
  check_counter_keys_args(seed, draw, n);
  at::Tensor out = at::empty({n}, seed.options());
  const uint64_t mixed = mix63(static_cast<uint64_t>(seed.item<int64_t>()));
  const int64_t d = draw.item<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) o[i] = counter_key(mixed, d, n, i);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CPU, m) { m.impl("counter_keys", &counter_keys_cpu); }
TORCH_LIBRARY_IMPL(mtlk, Autograd, m) { m.impl("counter_keys", torch::CppFunction::makeFallthrough()); }

}  // namespace mtlk
