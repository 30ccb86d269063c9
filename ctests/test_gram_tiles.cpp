// C++ tests of the CUDA Gram kernel's tile math (csrc/include/mtlk/gram_tiles.h), run on the
// host: the pair numbering covers the upper triangle once, and a chunk staged as double keeps
// float64 gradients exact where float staging (the kernel before) lost them.
#include <cmath>
#include <cstdint>
#include <vector>

#include "expect.h"
#include "mtlk/gram_tiles.h"

namespace {

void test_pairs_cover_the_upper_triangle() {
  for (int64_t T = 1; T <= 9; ++T) {
    std::vector<int> seen(T * T, 0);
    int64_t expected = 0;
    for (int64_t q = 0; q < mtlk::gram_pairs(T); ++q) {
      int64_t i, j;
      mtlk::gram_pair(q, T, &i, &j);
      EXPECT(i >= 0 && j >= i && j < T);
      EXPECT(i * T + j >= expected);  // row-major order
      expected = i * T + j;
      ++seen[i * T + j];
    }
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < T; ++j) EXPECT(seen[i * T + j] == (j >= i ? 1 : 0));
  }
}

// Rows 1 + small offsets: their products need float64 (float keeps 24 bits).
std::vector<double> rows_of(int64_t T, int64_t n) {
  std::vector<double> rows(T * n);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t p = 0; p < n; ++p) rows[t * n + p] = 1.0 + 1e-9 * static_cast<double>((p * (t + 3)) % 97);
  return rows;
}

void test_chunks_sum_to_the_float64_gram() {
  const int64_t T = 3, n = 2 * mtlk::kGramChunk + 77;  // partial last chunk and tile
  const std::vector<double> rows = rows_of(T, n);
  std::vector<double> G(T * T, 0.0), tile(T * mtlk::kGramTile), partial(mtlk::gram_pairs(T));
  for (int64_t lo = 0; lo < n; lo += mtlk::kGramChunk) {
    const int64_t hi = lo + mtlk::kGramChunk < n ? lo + mtlk::kGramChunk : n;
    mtlk::gram_chunk_reference(rows.data(), n, T, lo, hi, tile.data(), partial.data());
    for (int64_t q = 0; q < mtlk::gram_pairs(T); ++q) {
      int64_t i, j;
      mtlk::gram_pair(q, T, &i, &j);
      G[i * T + j] += partial[q];
      if (i != j) G[j * T + i] += partial[q];
    }
  }
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) {
      long double exact = 0.0L, staged_as_float = 0.0L;
      for (int64_t p = 0; p < n; ++p) {
        exact += static_cast<long double>(rows[i * n + p]) * rows[j * n + p];
        staged_as_float += static_cast<long double>(static_cast<float>(rows[i * n + p])) *
                           static_cast<float>(rows[j * n + p]);
      }
      const double err = std::fabs(static_cast<double>(G[i * T + j] - exact)) / static_cast<double>(exact);
      const double float_err = std::fabs(static_cast<double>(staged_as_float - exact)) / static_cast<double>(exact);
      EXPECT(err < 1e-14);
      EXPECT(float_err > 1e-10);  // what the float staging would have cost
    }
  }
}

void test_float_rows_accumulate_in_double() {
  // float rows: the tile products are summed in double; summed in float (as the kernel did
  // within a tile) the squares of values near 4096 round away their low bits
  const int64_t T = 2, n = 1000;
  std::vector<float> rows(T * n);
  for (int64_t p = 0; p < n; ++p) {
    rows[p] = 4096.0f + static_cast<float>(p % 7);
    rows[n + p] = 1.0f / 4096.0f;
  }
  std::vector<double> tile(T * mtlk::kGramTile), partial(mtlk::gram_pairs(T));
  mtlk::gram_chunk_reference(rows.data(), n, T, 0, n, tile.data(), partial.data());
  double want00 = 0.0, want01 = 0.0;
  for (int64_t p = 0; p < n; ++p) {
    want00 += static_cast<double>(rows[p]) * rows[p];
    want01 += static_cast<double>(rows[p]) * rows[n + p];
  }
  EXPECT(std::fabs(partial[0] - want00) <= 1e-12 * want00);
  EXPECT(std::fabs(partial[1] - want01) <= 1e-12 * want01);
  double float_tiles = 0.0;
  for (int64_t p0 = 0; p0 < n; p0 += mtlk::kGramTile) {
    float s = 0.0f;
    for (int64_t p = p0; p < n && p < p0 + mtlk::kGramTile; ++p) s += rows[p] * rows[p];
    float_tiles += s;
  }
  EXPECT(std::fabs(float_tiles - want00) > 1e-9 * want00);
}

}  // namespace

int main() {
  test_pairs_cover_the_upper_triangle();
  test_chunks_sum_to_the_float64_gram();
  test_float_rows_accumulate_in_double();
  return mtlk_test::finish("test_gram_tiles");
}
