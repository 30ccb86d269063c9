// Tile math of the CUDA Gram kernel (csrc/cuda/gram.cu), shared with the C++ tests so the CPU
// runs exactly the arithmetic the GPU does.
//
// G = J J^T of T task-gradient rows of length n is accumulated in float64 whatever the rows'
// dtype: a chunk of kGramChunk elements per CUDA block, staged kGramTile elements at a time as
// double, each upper-triangle pair (i, j >= i) owned by one thread summing its tile products in
// double. Pairs are numbered row-major over the upper triangle.
#pragma once

#include <cstdint>

#include "mtlk/macros.h"

namespace mtlk {

constexpr int64_t kGramChunk = 8192;  // elements of P per CUDA block
constexpr int kGramTile = 64;          // elements of P staged per shared-memory tile (as double)

MTLK_HOST_DEVICE int64_t gram_pairs(int64_t T) { return T * (T + 1) / 2; }

// Upper-triangle pair number -> (i, j), j >= i.
MTLK_HOST_DEVICE void gram_pair(int64_t pair, int64_t T, int64_t* i, int64_t* j) {
  int64_t r = 0, rem = pair;
  while (rem >= T - r) {
    rem -= T - r;
    ++r;
  }
  *i = r;
  *j = r + rem;
}

// Dot product of rows i and j of a staged tile [T][kGramTile] (zero-padded past the data).
MTLK_HOST_DEVICE double gram_tile_dot(const double* tile, int64_t i, int64_t j) {
  double s = 0.0;
  for (int p = 0; p < kGramTile; ++p) s += tile[i * kGramTile + p] * tile[j * kGramTile + p];
  return s;
}

// The partial G of one chunk [lo, hi) of the rows (row t at rows + t * ld), in the kernel's
// order: tile by tile, each pair's tile sums added in double. `tile` is scratch of
// T * kGramTile doubles; `partial` gets gram_pairs(T) values. Host reference of one block.
template <typename scalar_t>
inline void gram_chunk_reference(const scalar_t* rows, int64_t ld, int64_t T, int64_t lo, int64_t hi, double* tile,
                                 double* partial) {
  const int64_t pairs = gram_pairs(T);
  for (int64_t q = 0; q < pairs; ++q) partial[q] = 0.0;
  for (int64_t p0 = lo; p0 < hi; p0 += kGramTile) {
    const int64_t len = hi - p0 < kGramTile ? hi - p0 : kGramTile;
    for (int64_t e = 0; e < T * kGramTile; ++e) {
      const int64_t t = e / kGramTile, p = e % kGramTile;
      tile[e] = p < len ? static_cast<double>(rows[t * ld + p0 + p]) : 0.0;
    }
    for (int64_t q = 0; q < pairs; ++q) {
      int64_t i, j;
      gram_pair(q, T, &i, &j);
      partial[q] += gram_tile_dot(tile, i, j);
    }
  }
}

}  // namespace mtlk
