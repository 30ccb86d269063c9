// Counter-based random keys (the projection orders of PCGrad and GradVac, RLW's weights): key i
// of draw d of the stream with seed s is mix(mix(s) ^ mix(d * n + i + kKeyOffset)), mix the
// splitmix64 finaliser on the low 63 bits, so every key is a non-negative int64. The same
// bits as mtlkernels/reference/counter_keys.py (int64 tensor arithmetic: products wrap, shifts
// of the masked non-negative values are logical), on the host and in device code.
#pragma once

#include <cstdint>

#include "mtlk/macros.h"

namespace mtlk {

constexpr uint64_t kKeyMask = (uint64_t{1} << 63) - 1;
constexpr uint64_t kKeyOffset = 0x2545F4914F6CDD1Dull;

MTLK_HOST_DEVICE uint64_t mix63(uint64_t x) {
  x &= kKeyMask;
  x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull) & kKeyMask;
  x = ((x ^ (x >> 27)) * 0x94d049bb133111ebull) & kKeyMask;
  return (x ^ (x >> 31)) & kKeyMask;
}

// Key i of draw `draw` (n keys per draw) of the stream whose mixed seed is mix63(seed).
MTLK_HOST_DEVICE int64_t counter_key(uint64_t mixed_seed, int64_t draw, int64_t n, int64_t i) {
  const uint64_t counter =
      static_cast<uint64_t>(draw) * static_cast<uint64_t>(n) + static_cast<uint64_t>(i) + kKeyOffset;
  return static_cast<int64_t>(mix63(mixed_seed ^ mix63(counter)));
}

}  // namespace mtlk
