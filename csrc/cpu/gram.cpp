// Per-task gradient algebra on CPU: the Gram matrix of the task gradients and their weighted
// combination, over a list of parameter blocks (block k = [T, n_k], row t = task t's
// gradient of parameter k), without concatenating the blocks.
//
// gram: G = sum_k B_k B_k^T. The P dimension is cut into chunks of kChunk elements; inside a
// chunk the T x T products accumulate in float32 vector registers (4 x 4 row tiles, so each
// loaded vector feeds four FMAs), and each chunk's partial is added to a float64 total. That
// keeps the relative error of ||g||^2 near 1e-7 at P = 1e7 (plain fp32 accumulation loses
// ~1e-4, BUILD-NOTES/PERF-BASELINE B5) while J is read once at streaming speed.
// combine_: out_k += w^T B_k (or out_k = w^T B_k), one pass over B_k, in place.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/vec_store.h"
#include "gram_checks.h"

namespace mtlk {
namespace {

using at::vec::Vectorized;

constexpr int64_t kChunk = 1024;  // elements of P per partial product (T x kChunk x 4 B in L1/L2)
constexpr int kMaxTile = 4;

// out[i][j] = <ri[i][0:n], rj[j][0:n]> for a kTile x kTile tile of rows, in acc_t vectors;
// rows beyond the tile's valid count point at a zero row.
template <int kTile, typename acc_t>
void tile_dots(const acc_t* const* ri, const acc_t* const* rj, int64_t n, double out[kMaxTile][kMaxTile]) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec acc[kTile][kTile];
  for (int a = 0; a < kTile; ++a)
    for (int b = 0; b < kTile; ++b) acc[a][b] = Vec(0);
  int64_t p = 0;
  for (; p + V <= n; p += V) {
    Vec x[kTile], y[kTile];
    for (int a = 0; a < kTile; ++a) x[a] = Vec::loadu(ri[a] + p);
    for (int b = 0; b < kTile; ++b) y[b] = Vec::loadu(rj[b] + p);
    for (int a = 0; a < kTile; ++a)
      for (int b = 0; b < kTile; ++b) acc[a][b] = at::vec::fmadd(x[a], y[b], acc[a][b]);
  }
  if (p < n) {
    const int64_t k = n - p;
    Vec x[kTile], y[kTile];
    for (int a = 0; a < kTile; ++a) x[a] = Vec::loadu(ri[a] + p, k);
    for (int b = 0; b < kTile; ++b) y[b] = Vec::loadu(rj[b] + p, k);
    for (int a = 0; a < kTile; ++a)
      for (int b = 0; b < kTile; ++b) acc[a][b] = at::vec::fmadd(x[a], y[b], acc[a][b]);
  }
  for (int a = 0; a < kTile; ++a)
    for (int b = 0; b < kTile; ++b)
      out[a][b] = static_cast<double>(
          at::vec::vec_reduce_all<acc_t>([](Vec& u, Vec& v) { return u + v; }, acc[a][b]));
}

// G (double, T x T, upper triangle) += Gram of the chunk rows[t][0:n], in kTile x kTile row
// tiles (2 x 2 for T <= 2, so no FMA is spent on padding rows).
template <int kTile, typename acc_t>
void chunk_gram(const acc_t* const* rows, const acc_t* zero, int64_t T, int64_t n, double* G) {
  double part[kMaxTile][kMaxTile];
  for (int64_t i0 = 0; i0 < T; i0 += kTile) {
    const acc_t* ri[kTile];
    for (int a = 0; a < kTile; ++a) ri[a] = i0 + a < T ? rows[i0 + a] : zero;
    for (int64_t j0 = i0; j0 < T; j0 += kTile) {
      const acc_t* rj[kTile];
      for (int b = 0; b < kTile; ++b) rj[b] = j0 + b < T ? rows[j0 + b] : zero;
      tile_dots<kTile>(ri, rj, n, part);
      for (int a = 0; a < kTile && i0 + a < T; ++a)
        for (int b = 0; b < kTile && j0 + b < T; ++b) G[(i0 + a) * T + (j0 + b)] += part[a][b];
    }
  }
}

// Gram of one [T, n] block (row stride ld) into the upper triangle of G, chunks split over threads.
template <typename scalar_t>
void block_gram(const scalar_t* data, int64_t ld, int64_t T, int64_t n, double* G) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * T * T, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    double* Gp = partial.data() + static_cast<size_t>(at::get_thread_num()) * T * T;
    std::vector<acc_t> zero(kChunk, acc_t(0));
    std::vector<acc_t> buf(widen ? T * kChunk : 0);
    std::vector<const acc_t*> rows(T);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * kChunk, len = std::min(kChunk, n - lo);
      for (int64_t t = 0; t < T; ++t) {
        if constexpr (widen) {
          for (int64_t p = 0; p < len; ++p) buf[t * kChunk + p] = static_cast<acc_t>(data[t * ld + lo + p]);
          rows[t] = buf.data() + t * kChunk;
        } else {
          rows[t] = data + t * ld + lo;
        }
      }
      if (T <= 2) {
        chunk_gram<2>(rows.data(), zero.data(), T, len, Gp);
      } else {
        chunk_gram<kMaxTile>(rows.data(), zero.data(), T, len, Gp);
      }
    }
  });
  for (int th = 0; th < threads; ++th)
    for (int64_t i = 0; i < T * T; ++i) G[i] += partial[static_cast<size_t>(th) * T * T + i];
}

void symmetrize(double* G, int64_t T) {
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < i; ++j) G[i * T + j] = G[j * T + i];
}

at::Tensor rows_of(const at::Tensor& block) {
  return block.contiguous().view({block.size(0), -1});
}

void accumulate_block_gram(const at::Tensor& block, double* G, int64_t T) {
  const at::Tensor rows = rows_of(block);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "gram_cpu", [&] {
    block_gram<scalar_t>(rows.const_data_ptr<scalar_t>(), rows.stride(0), T, rows.size(1), G);
  });
}

at::Tensor gram_cpu(at::TensorList blocks) {
  const int64_t T = check_blocks(blocks, "gram");
  at::Tensor G = at::zeros({T, T}, blocks[0].options().dtype(at::kDouble));
  double* g = G.mutable_data_ptr<double>();
  for (const at::Tensor& b : blocks) accumulate_block_gram(b, g, T);
  symmetrize(g, T);
  return G;
}

at::Tensor block_grams_cpu(at::TensorList blocks) {
  const int64_t T = check_blocks(blocks, "block_grams");
  const int64_t K = static_cast<int64_t>(blocks.size());
  at::Tensor G = at::zeros({K, T, T}, blocks[0].options().dtype(at::kDouble));
  double* g = G.mutable_data_ptr<double>();
  for (int64_t k = 0; k < K; ++k) {
    accumulate_block_gram(blocks[k], g + k * T * T, T);
    symmetrize(g + k * T * T, T);
  }
  return G;
}

// out[0:n] += sum_t w[t] * rows[t][0:n], vectorised over n, threads over chunks.
template <typename scalar_t>
void combine_block(const scalar_t* data, int64_t ld, const double* w, int64_t T, int64_t n, scalar_t* out,
                   bool accumulate) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr bool widen = !std::is_same_v<scalar_t, acc_t>;
  std::vector<acc_t> wa(T);
  for (int64_t t = 0; t < T; ++t) wa[t] = static_cast<acc_t>(w[t]);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
      if constexpr (widen) {
        for (int64_t p = lo; p < hi; ++p) {
          acc_t acc = accumulate ? static_cast<acc_t>(out[p]) : acc_t(0);
          for (int64_t t = 0; t < T; ++t) acc += wa[t] * static_cast<acc_t>(data[t * ld + p]);
          out[p] = static_cast<scalar_t>(acc);
        }
      } else {
        int64_t p = lo;
        for (; p + V <= hi; p += V) {
          Vec acc = accumulate ? Vec::loadu(out + p) : Vec(0);
          for (int64_t t = 0; t < T; ++t) acc = at::vec::fmadd(Vec(wa[t]), Vec::loadu(data + t * ld + p), acc);
          if (accumulate) {
            acc.store(out + p);
          } else {
            store_stream(acc, out + p);  // a fresh .grad: no read-for-ownership
          }
        }
        if (p < hi) {
          const int64_t k = hi - p;
          Vec acc = accumulate ? Vec::loadu(out + p, k) : Vec(0);
          for (int64_t t = 0; t < T; ++t) acc = at::vec::fmadd(Vec(wa[t]), Vec::loadu(data + t * ld + p, k), acc);
          acc.store(out + p, k);
        }
      }
    }
    store_fence();
  });
}

void combine_cpu(at::TensorList blocks, const at::Tensor& weights, at::TensorList out, bool accumulate) {
  const int64_t T = check_combine(blocks, weights, out);
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  const double* wp = w.const_data_ptr<double>();
  for (size_t k = 0; k < blocks.size(); ++k) {
    const at::Tensor rows = rows_of(blocks[k].to(out[k].scalar_type()));
    at::Tensor target = out[k];
    TORCH_CHECK_VALUE(target.is_contiguous(), "combine_: out[", k, "] must be contiguous (a parameter's .grad)");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, target.scalar_type(), "combine_cpu", [&] {
      combine_block<scalar_t>(rows.const_data_ptr<scalar_t>(), rows.stride(0), wp, T, rows.size(1),
                              target.mutable_data_ptr<scalar_t>(), accumulate);
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlk, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("block_grams", &block_grams_cpu);
  m.impl("combine_", &combine_cpu);
}

}  // namespace mtlk
