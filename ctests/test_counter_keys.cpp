// C++ test of the counter-based keys in csrc/include/mtlk/counter_keys.h (what the CUDA kernel
// runs) against values of the int64 reference (mtlkernels/reference/counter_keys.py), and the
// CPU kernel reached through the dispatcher against the header. Run by ctest.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <vector>

#include "expect.h"
#include "mtlk/counter_keys.h"

namespace {

struct Case {
  int64_t seed, draw, n;
  std::vector<int64_t> keys;  // from mtlkernels.reference.counter_keys
};

const std::vector<Case> kCases = {
    {0, 0, 4, {7032814389828736726, 212090086374274719, 8091809491612177425, 3454359810280733495}},
    {5, 3, 3, {9064376947112470502, 4923312846871327075, 3157406228413619553}},
    {4611686018427387903, 1099511627776, 2, {9089091228437401897, 5445465227021676781}},
};

}  // namespace

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("mtlk::counter_keys", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  for (const Case& c : kCases) {
    const uint64_t mixed = mtlk::mix63(static_cast<uint64_t>(c.seed));
    const at::Tensor keys = op.call(at::scalar_tensor(c.seed, at::kLong), at::scalar_tensor(c.draw, at::kLong), c.n);
    EXPECT(keys.numel() == c.n);
    for (int64_t i = 0; i < c.n; ++i) {
      EXPECT(mtlk::counter_key(mixed, c.draw, c.n, i) == c.keys[i]);
      EXPECT(keys[i].item<int64_t>() == c.keys[i]);
    }
  }
  return mtlk_test::finish("test_counter_keys");
}
