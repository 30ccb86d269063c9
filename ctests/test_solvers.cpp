// C++ tests of the T x T solvers: the per-problem math in csrc/include/mtlk/solvers.h (what
// the CUDA kernels run) on closed-form cases, and the CPU kernels reached through the
// dispatcher against that math. Run by ctest; exits non-zero on any failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "mtlk/solvers.h"
#include "expect.h"

namespace {

bool near(double a, double b, double tol = 1e-12) { return std::abs(a - b) <= tol * (1.0 + std::abs(b)); }

// G = J J^T for J [T, P] row-major.
std::vector<double> gram_of(const std::vector<double>& J, int64_t T, int64_t P) {
  std::vector<double> G(T * T, 0.0);
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j)
      for (int64_t p = 0; p < P; ++p) G[i * T + j] += J[i * P + p] * J[j * P + p];
  return G;
}

std::vector<int64_t> identity_orders(int64_t T) {
  std::vector<int64_t> o(T * T);
  for (int64_t i = 0; i < T; ++i)
    for (int64_t k = 0; k < T; ++k) o[i * T + k] = k;
  return o;
}

void test_min_norm_pair() {
  double gamma, cost;
  mtlk::min_norm_pair(1.0, 2.0, 5.0, &gamma, &cost);  // b >= a: v1 itself
  EXPECT(gamma == 1.0 && cost == 1.0);
  mtlk::min_norm_pair(5.0, 2.0, 1.0, &gamma, &cost);  // b >= c: v2 itself
  EXPECT(gamma == 0.0 && cost == 1.0);
  mtlk::min_norm_pair(0.0, 0.0, 0.0, &gamma, &cost);  // two zero vectors: no 0/0
  EXPECT(gamma == 1.0 && cost == 0.0);
  mtlk::min_norm_pair(1.0, -1.0, 1.0, &gamma, &cost);  // opposite: midpoint, zero norm
  EXPECT(near(gamma, 0.5) && std::abs(cost) < 1e-15);
  mtlk::min_norm_pair(2.0, 0.5, 1.0, &gamma, &cost);  // interior: (c - b) / (a + c - 2b)
  EXPECT(near(gamma, 0.5 / 2.0) && near(cost, 1.0 + gamma * (0.5 - 1.0)));
}

void test_mgda() {
  double w[4], scratch[4];
  // T = 2 closed form, and the scale domination g1 = 2 g2 -> all weight on g2 (exactly)
  const std::vector<double> G2 = gram_of({2.0, 0.0, 1.0, 0.0}, 2, 2);
  EXPECT(mtlk::mgda_solve(G2.data(), 2, 250, 1e-5, w, scratch) == mtlk::kSolverOk);
  EXPECT(w[0] == 0.0 && w[1] == 1.0);
  const double G2b[4] = {2.0, 0.5, 0.5, 1.0};
  mtlk::mgda_solve(G2b, 2, 250, 1e-5, w, scratch);
  EXPECT(near(w[0], 0.25) && near(w[1], 0.75));
  // T = 1
  const double G1[1] = {3.0};
  mtlk::mgda_solve(G1, 1, 250, 1e-5, w, scratch);
  EXPECT(w[0] == 1.0);
  // orthogonal equal norms -> uniform (Frank-Wolfe from the best pair reaches it exactly)
  const double I4[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  mtlk::mgda_solve(I4, 4, 250, 1e-5, w, scratch);
  for (int k = 0; k < 4; ++k) EXPECT(near(w[k], 0.25));
  // orthogonal, norms^2 1, 2, 3 -> w proportional to 1 / G_ii = (6, 3, 2) / 11 (interior
  // optimum: Frank-Wolfe converges linearly)
  const double D3[9] = {1, 0, 0, 0, 2, 0, 0, 0, 3};
  mtlk::mgda_solve(D3, 3, 100000, 0.0, w, scratch);
  EXPECT(near(w[0], 6.0 / 11.0, 1e-9) && near(w[1], 3.0 / 11.0, 1e-9) && near(w[2], 2.0 / 11.0, 1e-9));
  // best pair already optimal (third gradient far away): no Frank-Wolfe step moves it
  const std::vector<double> G3 = gram_of({1.0, 0.0, -1.0, 0.0, 0.0, 5.0}, 3, 2);
  mtlk::mgda_solve(G3.data(), 3, 250, 1e-5, w, scratch);
  EXPECT(w[0] == 0.5 && w[1] == 0.5 && w[2] == 0.0);
  // zero gradients: a valid simplex point, no NaN
  const double Z3[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  mtlk::mgda_solve(Z3, 3, 250, 1e-5, w, scratch);
  EXPECT(w[0] == 1.0 && w[1] == 0.0 && w[2] == 0.0);
  // max_iter = 0 returns the best pair
  mtlk::mgda_solve(I4, 4, 0, 1e-5, w, scratch);
  EXPECT(w[0] == 0.5 && w[1] == 0.5 && w[2] == 0.0 && w[3] == 0.0);
  const double bad[4] = {1.0, NAN, NAN, 1.0};
  EXPECT(mtlk::mgda_solve(bad, 2, 250, 1e-5, w, scratch) == mtlk::kSolverNonFiniteGram);
}

void test_pcgrad() {
  double w[3], scratch[6];
  // g1 = (1, 0), g2 = (-1, 1): G12 = -1 < 0, so gpc_1 = g1 + g2 / 2, gpc_2 = g2 + g1
  const std::vector<double> G = gram_of({1.0, 0.0, -1.0, 1.0}, 2, 2);
  const std::vector<int64_t> o2 = identity_orders(2);
  EXPECT(mtlk::pcgrad_solve(G.data(), o2.data(), 2, w, scratch) == mtlk::kSolverOk);
  EXPECT(near(w[0], 1.0 + 1.0) && near(w[1], 0.5 + 1.0));
  // no conflict -> ones
  const std::vector<double> Gp = gram_of({1.0, 0.2, 0.3, 1.0, 0.5, 0.5}, 3, 2);
  const std::vector<int64_t> o3 = identity_orders(3);
  mtlk::pcgrad_solve(Gp.data(), o3.data(), 3, w, scratch);
  EXPECT(w[0] == 1.0 && w[1] == 1.0 && w[2] == 1.0);
  // a zero gradient is never projected onto, and is itself left at zero
  const std::vector<double> Gz = gram_of({1.0, 0.0, 0.0, 0.0, -1.0, 1.0}, 3, 2);
  mtlk::pcgrad_solve(Gz.data(), o3.data(), 3, w, scratch);
  EXPECT(near(w[0], 2.0) && w[1] == 1.0 && near(w[2], 1.5));
  // order rows must be permutations
  std::vector<int64_t> dup = identity_orders(2);
  dup[1] = 0;
  EXPECT(mtlk::pcgrad_solve(G.data(), dup.data(), 2, w, scratch) == mtlk::kSolverBadOrder);
  std::vector<int64_t> out_of_range = identity_orders(2);
  out_of_range[3] = 2;
  EXPECT(mtlk::pcgrad_solve(G.data(), out_of_range.data(), 2, w, scratch) == mtlk::kSolverBadOrder);
  const double inf_gram[4] = {1.0, 0.0, 0.0, INFINITY};
  EXPECT(mtlk::pcgrad_solve(inf_gram, o2.data(), 2, w, scratch) == mtlk::kSolverNonFiniteGram);
}

void test_gradvac() {
  const int64_t T = 3;
  const std::vector<double> J = {1.0, 0.0, 0.3, -0.8, 0.6, 0.1, 0.2, -1.0, 0.4};
  const std::vector<double> G = gram_of(J, T, 3);
  const std::vector<int64_t> o = {2, 1, 0, 0, 2, 1, 1, 0, 2};
  double wp[3], wv[3], scratch[6];
  mtlk::pcgrad_solve(G.data(), o.data(), T, wp, scratch);
  // target 0, beta 0 is PCGrad up to the 1e-8 eps
  std::vector<double> target(T * T, 0.0);
  EXPECT(mtlk::gradvac_solve(G.data(), o.data(), target.data(), 0.0, true, T, wv, scratch) == mtlk::kSolverOk);
  for (int k = 0; k < T; ++k) EXPECT(near(wv[k], wp[k], 1e-7));
  for (double t : target) EXPECT(t == 0.0);
  // two tasks: after the adjustment cos(gpc_1, g2) equals the target; EMA of both pairs
  const std::vector<double> G2 = gram_of({1.0, 0.0, -0.6, 0.8}, 2, 2);  // cos = -0.6
  const std::vector<int64_t> o2 = identity_orders(2);
  std::vector<double> t2 = {0.0, 0.5, 0.5, 0.0};
  double w2[2];
  mtlk::gradvac_solve(G2.data(), o2.data(), t2.data(), 0.25, true, 2, w2, scratch);
  EXPECT(near(t2[1], 0.75 * 0.5 + 0.25 * -0.6, 1e-7) && near(t2[2], t2[1]));
  EXPECT(t2[0] == 0.0 && t2[3] == 0.0);
  std::vector<double> t1 = {0.0, 0.5, -1.0, 0.0};  // task 2's target -1: never adjusted
  mtlk::gradvac_solve(G2.data(), o2.data(), t1.data(), 0.0, true, 2, w2, scratch);
  const double delta = w2[1] - 1.0;  // task 2 keeps c = e_2, task 1 gets c = (1, delta)
  EXPECT(near(w2[0], 1.0));
  const double gx = 1.0 + delta * -0.6, gy = delta * 0.8;  // gpc_1
  const double cosine = (gx * -0.6 + gy * 0.8) / std::sqrt(gx * gx + gy * gy);
  EXPECT(near(cosine, 0.5, 1e-7));
  std::vector<double> bad_target = {0.0, 1.5, 0.0, 0.0};
  EXPECT(mtlk::gradvac_solve(G2.data(), o2.data(), bad_target.data(), 0.5, true, 2, w2, scratch) ==
         mtlk::kSolverBadTarget);
  EXPECT(bad_target[1] == 1.5);
  // LibMTL's rule: only the adjusted pair moves its target (task 2's -1 is never adjusted)
  std::vector<double> t3 = {0.0, 0.5, -1.0, 0.0};
  mtlk::gradvac_solve(G2.data(), o2.data(), t3.data(), 0.5, false, 2, w2, scratch);
  EXPECT(near(t3[1], 0.5 * 0.5 + 0.5 * -0.6, 1e-7) && t3[2] == -1.0);
  std::vector<double> t4 = {0.0, 0.5, -1.0, 0.0};
  mtlk::gradvac_solve(G2.data(), o2.data(), t4.data(), 0.5, true, 2, w2, scratch);
  EXPECT(near(t4[2], 0.5 * -1.0 + 0.5 * -0.6, 1e-7));
  // the epsilons are relative: a gradient scale of 1e-6 (G of 1e-12) gives the same weights
  std::vector<double> tiny(4);
  for (int k = 0; k < 4; ++k) tiny[k] = G2[k] * 1e-12;
  std::vector<double> ta = {0.0, 0.5, 0.5, 0.0}, tb = ta;
  double wa[2], wb[2];
  mtlk::gradvac_solve(G2.data(), o2.data(), ta.data(), 0.5, true, 2, wa, scratch);
  mtlk::gradvac_solve(tiny.data(), o2.data(), tb.data(), 0.5, true, 2, wb, scratch);
  for (int k = 0; k < 2; ++k) EXPECT(near(wa[k], wb[k], 1e-9) && near(ta[k + 1], tb[k + 1], 1e-9));
  // collinear rows a, -2a, 3a: every stored target stays a cosine, and the next step runs
  const std::vector<double> Gc = gram_of({1.0, 2.0, -2.0, -4.0, 3.0, 6.0}, 3, 2);
  const std::vector<int64_t> oc = {0, 1, 2, 0, 1, 2, 1, 0, 2};
  std::vector<double> tc(9, 0.0);
  double wc[3], sc[6];
  for (int step = 0; step < 3; ++step) {
    EXPECT(mtlk::gradvac_solve(Gc.data(), oc.data(), tc.data(), 0.5, true, 3, wc, sc) == mtlk::kSolverOk);
    for (double t : tc) EXPECT(t >= -1.0 && t <= 1.0);
  }
}

// min w^T G w over the simplex by enumerating supports (the affine minimiser of each subset).
double brute_force_min_norm(const std::vector<double>& G, int64_t T) {
  double scale = 0.0, best = 1e300;
  for (int64_t k = 0; k < T; ++k) scale = std::max(scale, G[k * T + k]);
  std::vector<double> S(T + 2), M((T + 2) * (T + 2)), alpha(T + 2);
  for (int64_t mask = 1; mask < (int64_t(1) << T); ++mask) {
    int64_t s = 0;
    for (int64_t i = 0; i < T; ++i)
      if ((mask >> i) & 1) S[s++] = static_cast<double>(i);
    if (!mtlk::corral_solve(G.data(), T, S.data(), s, scale, nullptr, M.data(), alpha.data(), nullptr)) continue;
    bool inside = true;
    for (int64_t i = 0; i < s; ++i) inside = inside && alpha[i] >= -1e-12;
    if (!inside) continue;
    double v = 0.0;
    for (int64_t a = 0; a < s; ++a)
      for (int64_t b = 0; b < s; ++b) v += alpha[a] * alpha[b] * G[int64_t(S[a]) * T + int64_t(S[b])];
    best = std::min(best, v);
  }
  return best;
}

void test_min_norm() {
  // against the enumeration: random, collinear and low-rank gradients, T = 3..8
  uint64_t state = 12345;
  const auto uniform = [&]() {  // xorshift in [-1, 1)
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return static_cast<double>(state >> 11) / 4503599627370496.0 - 1.0;
  };
  for (int trial = 0; trial < 120; ++trial) {
    const int64_t T = 3 + trial % 6, P = trial % 3 == 0 ? 2 : (trial % 3 == 1 ? 3 : T + 4);
    std::vector<double> J(T * P);
    for (double& v : J) v = uniform();
    if (trial % 4 == 0)
      for (int64_t p = 0; p < P; ++p) J[P + p] = -2.0 * J[p];  // two opposite, collinear gradients
    const std::vector<double> G = gram_of(J, T, P);
    std::vector<double> w(T), scratch(mtlk::min_norm_scratch(T));
    EXPECT(mtlk::min_norm_solve(G.data(), T, w.data(), scratch.data()) == mtlk::kSolverOk);
    double sum = 0.0, v = 0.0, scale = 0.0;
    for (int64_t a = 0; a < T; ++a) {
      sum += w[a];
      EXPECT(w[a] >= 0.0);
      scale = std::max(scale, G[a * T + a]);
      for (int64_t b = 0; b < T; ++b) v += w[a] * w[b] * G[a * T + b];
    }
    EXPECT(near(sum, 1.0, 1e-12));
    const double best = brute_force_min_norm(G, T);
    EXPECT(v - best <= 1e-9 * std::max(best, 0.0) + 1e-13 * scale);
  }
  double w1[1];
  std::vector<double> s1(mtlk::min_norm_scratch(1));
  const double g1[1] = {4.0};
  EXPECT(mtlk::min_norm_solve(g1, 1, w1, s1.data()) == mtlk::kSolverOk && w1[0] == 1.0);
  double w3[3], s3[64];  // min_norm_scratch(3) = 55
  const double zeros[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT(mtlk::min_norm_solve(zeros, 3, w3, s3) == mtlk::kSolverOk && w3[0] == 1.0 && w3[1] == 0.0);
  const double bad[4] = {1.0, 0.0, 0.0, NAN};
  EXPECT(mtlk::min_norm_solve(bad, 2, w3, s3) == mtlk::kSolverNonFiniteGram);
}

// min v^T G v s.t. v >= u over every free set (G positive definite: the feasible KKT point).
double brute_force_dual_cone(const std::vector<double>& G, const std::vector<double>& u, int64_t T) {
  double best = INFINITY;
  for (int64_t mask = 0; mask < (int64_t{1} << T); ++mask) {
    std::vector<int64_t> F;
    for (int64_t i = 0; i < T; ++i)
      if (mask >> i & 1) F.push_back(i);
    const int64_t p = static_cast<int64_t>(F.size());
    std::vector<double> v(u), A(p * p), b(p);  // G_FF v_F = -G_FB u_B, Gaussian elimination
    for (int64_t r = 0; r < p; ++r) {
      b[r] = 0.0;
      for (int64_t j = 0; j < T; ++j)
        if (!(mask >> j & 1)) b[r] -= G[F[r] * T + j] * u[j];
      for (int64_t c = 0; c < p; ++c) A[r * p + c] = G[F[r] * T + F[c]];
    }
    for (int64_t k = 0; k < p; ++k)
      for (int64_t r = k + 1; r < p; ++r) {
        const double f = A[r * p + k] / A[k * p + k];
        for (int64_t c = k; c < p; ++c) A[r * p + c] -= f * A[k * p + c];
        b[r] -= f * b[k];
      }
    for (int64_t k = p - 1; k >= 0; --k) {
      double x = b[k];
      for (int64_t c = k + 1; c < p; ++c) x -= A[k * p + c] * v[F[c]];
      v[F[k]] = x / A[k * p + k];
    }
    bool feasible = true;
    for (int64_t i = 0; i < T; ++i) feasible = feasible && v[i] >= u[i] - 1e-12;
    if (!feasible) continue;
    double cost = 0.0;
    for (int64_t a = 0; a < T; ++a)
      for (int64_t c = 0; c < T; ++c) cost += v[a] * v[c] * G[a * T + c];
    best = std::min(best, cost);
  }
  return best;
}

void test_dual_cone() {
  // against the enumeration: random and low-rank gradients (regularised as UPGrad does), T = 2..8
  uint64_t state = 777;
  const auto uniform = [&]() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return static_cast<double>(state >> 11) / 4503599627370496.0 - 1.0;
  };
  for (int trial = 0; trial < 80; ++trial) {
    const int64_t T = 2 + trial % 7, P = trial % 2 == 0 ? 2 : T + 3;
    std::vector<double> J(T * P);
    for (double& v : J) v = uniform();
    std::vector<double> G = gram_of(J, T, P);
    double trace = 0.0;
    for (int64_t a = 0; a < T; ++a) trace += G[a * T + a];
    for (double& g : G) g /= trace;
    for (int64_t a = 0; a < T; ++a) G[a * T + a] += 1e-4;
    std::vector<double> u(T, 0.0), v(T), scratch(mtlk::dual_cone_scratch(T));
    u[trial % T] = 1.0 / static_cast<double>(T);
    if (trial % 3 == 0)
      for (double& x : u) x = uniform();
    EXPECT(mtlk::dual_cone_solve(G.data(), u.data(), T, v.data(), scratch.data()) == mtlk::kSolverOk);
    double cost = 0.0;
    for (int64_t a = 0; a < T; ++a) {
      EXPECT(v[a] >= u[a] - 1e-15);
      for (int64_t c = 0; c < T; ++c) cost += v[a] * v[c] * G[a * T + c];
    }
    const double best = brute_force_dual_cone(G, u, T);
    EXPECT(cost - best <= 1e-9 * best + 1e-15);
  }
  const double zeros[4] = {0, 0, 0, 0}, u2[2] = {0.5, -1.0}, bad_u[2] = {0.5, NAN};
  double v2[2], s2[16];
  EXPECT(mtlk::dual_cone_solve(zeros, u2, 2, v2, s2) == mtlk::kSolverOk && v2[0] == 0.5 && v2[1] == -1.0);
  const double eye[4] = {1, 0, 0, 1};
  EXPECT(mtlk::dual_cone_solve(eye, bad_u, 2, v2, s2) == mtlk::kSolverNonFiniteBound);
  const double bad_g[4] = {1, 0, 0, INFINITY};
  EXPECT(mtlk::dual_cone_solve(bad_g, u2, 2, v2, s2) == mtlk::kSolverNonFiniteGram);
  EXPECT(mtlk::dual_cone_solve(eye, u2, 2, v2, s2) == mtlk::kSolverOk && v2[0] == 0.5 && v2[1] == 0.0);
}

void test_cagrad() {
  // the KKT conditions of min_{w in simplex} b^T w + a |J^T w| at the solution: the gradient
  // b + a G w / |J^T w| is equal on the support and not smaller off it; random and low-rank J
  uint64_t state = 4242;
  const auto uniform = [&]() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return static_cast<double>(state >> 11) / 4503599627370496.0 - 1.0;
  };
  for (int trial = 0; trial < 120; ++trial) {
    const int64_t T = 2 + trial % 9, P = trial % 2 == 0 ? 3 : T + 5;
    std::vector<double> J(T * P);
    for (double& v : J) v = uniform();
    const std::vector<double> G = gram_of(J, T, P);
    const double c = 0.1 + 0.2 * (trial % 5);
    std::vector<double> w(T), scratch(mtlk::cagrad_scratch(T));
    EXPECT(mtlk::cagrad_solve(G.data(), T, c, w.data(), scratch.data()) == mtlk::kSolverOk);
    double total = 0.0, r2 = 0.0, sum = 0.0;
    for (int64_t i = 0; i < T; ++i) {
      sum += w[i];
      EXPECT(w[i] >= 0.0);
      for (int64_t j = 0; j < T; ++j) {
        total += G[i * T + j];
        r2 += w[i] * w[j] * G[i * T + j];
      }
    }
    EXPECT(near(sum, 1.0, 1e-12));
    if (!(r2 > 1e-20)) continue;  // J^T w = 0: nothing to check
    const double a = c * std::sqrt(total) / static_cast<double>(T), r = std::sqrt(r2);
    std::vector<double> grad(T);
    double on = -INFINITY, off = INFINITY, gmax = 0.0;
    for (int64_t i = 0; i < T; ++i) {
      double b = 0.0, gw = 0.0;
      for (int64_t j = 0; j < T; ++j) {
        b += G[i * T + j] / static_cast<double>(T);
        gw += G[i * T + j] * w[j];
      }
      grad[i] = b + a * gw / r;
      gmax = std::max(gmax, std::abs(grad[i]));
      if (w[i] > 1e-9) on = std::max(on, grad[i]);
      else off = std::min(off, grad[i]);
    }
    double low = INFINITY;
    for (int64_t i = 0; i < T; ++i)
      if (w[i] > 1e-9) low = std::min(low, grad[i]);
    EXPECT(on - low <= 1e-9 * gmax);           // equal on the support
    EXPECT(off >= on - 1e-9 * gmax);           // not smaller off it
  }
  const double eye[4] = {1, 0, 0, 1}, bad[4] = {1, 0, 0, NAN};
  double w2[2], s2[40];  // cagrad_scratch(2) = 33
  EXPECT(mtlk::cagrad_solve(eye, 2, 0.0, w2, s2) == mtlk::kSolverOk && w2[0] == 1.0 && w2[1] == 0.0);
  EXPECT(mtlk::cagrad_solve(bad, 2, 0.5, w2, s2) == mtlk::kSolverNonFiniteGram);
  EXPECT(mtlk::cagrad_solve(eye, 2, 0.5, w2, s2) == mtlk::kSolverOk && near(w2[0], 0.5) && near(w2[1], 0.5));
}

void test_peltr() {
  double w[4], wm[4], scratch[2 * 16 + 6 * 4], mscratch[4];
  // T = 2, c = 0: the MGDA closed form, interior and clipped
  for (const auto& J : std::vector<std::vector<double>>{{1.0, 0.0, 0.3, 0.7}, {2.0, 0.0, 1.0, 0.1},
                                                         {1.0, 0.0, -1.0, 0.0}}) {
    const std::vector<double> G = gram_of(J, 2, 2);
    const double c[2] = {0.0, 0.0};
    EXPECT(mtlk::peltr_solve(G.data(), c, 2, w, scratch) == mtlk::kSolverOk);
    mtlk::mgda_solve(G.data(), 2, 250, 1e-5, wm, mscratch);
    EXPECT(near(w[0], wm[0], 1e-10) && near(w[1], wm[1], 1e-10));
  }
  // orthogonal equal norms, bounds (0.4, 0, 0): the relaxed solution is uniform, so
  // what = (1/3 - 0.4, 1/3, 1/3), projected onto {v >= 0, sum v = 0.6}: (0, 0.3, 0.3)
  const double I3[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const double c3[3] = {0.4, 0.0, 0.0};
  mtlk::peltr_solve(I3, c3, 3, w, scratch);
  EXPECT(near(w[0], 0.4) && near(w[1], 0.3) && near(w[2], 0.3));
  // sum c = 1 -> c; T = 1 -> 1; G = 0 -> c + (1 - sum c) / T
  const double cfull[3] = {0.5, 0.25, 0.25};
  mtlk::peltr_solve(I3, cfull, 3, w, scratch);
  EXPECT(w[0] == 0.5 && w[1] == 0.25 && w[2] == 0.25);
  const double one[1] = {4.0}, c1[1] = {0.3};
  mtlk::peltr_solve(one, c1, 1, w, scratch);
  EXPECT(w[0] == 1.0);
  const double Z3[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  mtlk::peltr_solve(Z3, c3, 3, w, scratch);
  EXPECT(near(w[0], 0.6) && near(w[1], 0.2) && near(w[2], 0.2));
  // collinear gradients (g3 = g1 + g2, rank 2): weights of a zero-norm combination, in the simplex
  const std::vector<double> Gc = gram_of({1.0, 0.0, 0.0, 1.0, 1.0, 1.0}, 3, 2);
  const double c0[3] = {0.0, 0.0, 0.0};
  mtlk::peltr_solve(Gc.data(), c0, 3, w, scratch);
  EXPECT(std::abs(w[0] + w[1] + w[2] - 1.0) < 1e-12 && w[0] >= 0 && w[1] >= 0 && w[2] >= 0);
  const double bad_c[3] = {0.6, 0.6, 0.0};
  EXPECT(mtlk::peltr_solve(I3, bad_c, 3, w, scratch) == mtlk::kSolverBadLowerBounds);
  const double neg_c[3] = {-0.1, 0.0, 0.0};
  EXPECT(mtlk::peltr_solve(I3, neg_c, 3, w, scratch) == mtlk::kSolverBadLowerBounds);
  // projection onto {v >= 0, sum v = s}
  const double u[3] = {0.9, 0.4, -2.0};
  double v[3], sorted[3];
  mtlk::project_scaled_simplex(u, 3, 1.0, v, sorted);
  EXPECT(near(v[0], 0.75) && near(v[1], 0.25) && v[2] == 0.0);
}

using PcgradFn = at::Tensor(const at::Tensor&, const at::Tensor&);
using MgdaFn = at::Tensor(const at::Tensor&, int64_t, double);

void test_cpu_kernels() {
  auto& dispatcher = c10::Dispatcher::singleton();
  auto pcgrad = dispatcher.findSchemaOrThrow("mtlk::pcgrad_weights", "").typed<PcgradFn>();
  auto mgda = dispatcher.findSchemaOrThrow("mtlk::mgda_weights", "").typed<MgdaFn>();
  at::manual_seed(0);
  const int64_t N = 37, T = 6;
  const at::Tensor J = at::randn({N, T, 5}, at::kDouble);
  const at::Tensor G = at::bmm(J, J.transpose(1, 2)).contiguous();
  const at::Tensor order = at::argsort(at::rand({N, T, T}), /*dim=*/-1, /*descending=*/false).contiguous();
  const at::Tensor w = pcgrad.call(G, order);
  const at::Tensor wm = mgda.call(G, 250, 1e-5);
  std::vector<double> scratch(2 * T), one(T);
  for (int64_t n = 0; n < N; ++n) {
    mtlk::pcgrad_solve(G[n].const_data_ptr<double>(), order[n].const_data_ptr<int64_t>(), T, one.data(),
                       scratch.data());
    // not bitwise: the kernel library is built with the ISA flags (FMA contraction), this test not
    for (int64_t k = 0; k < T; ++k) EXPECT(near(one[k], w[n][k].item<double>(), 1e-9));
    mtlk::mgda_solve(G[n].const_data_ptr<double>(), T, 250, 1e-5, one.data(), scratch.data());
    for (int64_t k = 0; k < T; ++k) EXPECT(near(one[k], wm[n][k].item<double>(), 1e-6));
  }
  // errors name the argument and the first bad problem
  at::Tensor Gbad = G.clone();
  Gbad[5][1][2] = NAN;
  Gbad[9][0][0] = NAN;
  bool raised = false;
  try {
    mgda.call(Gbad, 250, 1e-5);
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what()).find("gram[5]") != std::string::npos;
  }
  EXPECT(raised);
  at::Tensor obad = order.clone();
  obad[3][2][0] = obad[3][2][1];
  raised = false;
  try {
    pcgrad.call(G, obad);
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what()).find("order[3, 2]") != std::string::npos;
  }
  EXPECT(raised);
  raised = false;
  try {
    pcgrad.call(G.to(at::kFloat), order);
  } catch (const c10::TypeError& e) {
    raised = std::string(e.what()).find("gram must be float64") != std::string::npos;
  }
  EXPECT(raised);
}

}  // namespace

int main() {
  test_min_norm_pair();
  test_mgda();
  test_min_norm();
  test_pcgrad();
  test_gradvac();
  test_peltr();
  test_dual_cone();
  test_cagrad();
  test_cpu_kernels();
  return mtlk_test::finish("test_solvers");
}
