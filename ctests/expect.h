// The check macro of the C++ tests: EXPECT(cond) prints the failing condition and counts it;
// finish(name) prints the verdict and gives main's exit status.
#pragma once

#include <cstdio>

namespace mtlk_test {

inline int failures = 0;

inline int finish(const char* name) {
  if (failures == 0) std::printf("%s: all checks passed\n", name);
  return failures == 0 ? 0 : 1;
}

}  // namespace mtlk_test

#define EXPECT(cond, ...)                                          \
  do {                                                             \
    if (!(cond)) {                                                 \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      ++mtlk_test::failures;                                       \
    }                                                              \
  } while (0)
