// Non-temporal vector stores for CPU kernels that write large outputs once.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace mtlk {

using at::vec::Vectorized;

// Stores a full vector. When the destination is vector-aligned the store is non-temporal:
// outputs here are written once and are larger than L2, so skipping the read-for-ownership
// saves a third of the write traffic. Callers issue store_fence() before returning.
template <typename acc_t>
inline void store_stream(const Vectorized<acc_t>& v, acc_t* p) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  constexpr uintptr_t kAlign = sizeof(Vectorized<acc_t>);
  if ((reinterpret_cast<uintptr_t>(p) & (kAlign - 1)) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) return _mm512_stream_ps(p, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm512_stream_pd(p, v);
#else
    if constexpr (std::is_same_v<acc_t, float>) return _mm256_stream_ps(p, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm256_stream_pd(p, v);
#endif
  }
#endif
  v.store(p);
}

inline void store_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

}  // namespace mtlk
