// T x T solvers of the gradient methods, one problem at a time, shared by the CPU and CUDA
// kernels (csrc/cpu/solvers.cpp, csrc/cuda/solvers.cu) and tested directly by ctests.
//
// Every solver reads only the Gram matrix G = J J^T of the T task gradients (row-major,
// T x T, float64, assumed symmetric) and writes per-task weights w [T] such that the combined
// update is d = J^T w. Conventions (specs/ALGORITHMS.md part 3):
//
//   pcgrad   (Yu et al., NeurIPS 2020; Gram form of torchjd, order semantics of LibMTL):
//            for each task i: c = e_i; for j in order[i] (j != i): ip = (G c)_j;
//            if ip < 0 and G_jj > 0: c_j -= ip / G_jj.  w = sum_i c  (sum convention).
//   gradvac  (Wang et al., ICLR 2021): as pcgrad, but the pair (i, j) is adjusted when
//            phi = cos(gpc_i, g_j) < target_ij, which sets the cosine to target_ij; phi is
//            clamped to [-1, 1] and taken before the adjustment; the EMA
//            target_ij <- (1 - beta) target_ij + beta phi runs only for the pairs whose
//            adjustment fired (every_pair = false: LibMTL and the authors' SamsungLabs code)
//            or for every visited pair (every_pair = true: TorchJD). The epsilons of both denominators are relative
//            to the scale of G (kGradVacEps times its largest diagonal entry, or its square
//            root), so J and s J give the same weights. w = sum_i c.
//   mgda     (Sener & Koltun, NeurIPS 2018): w in the simplex minimising w^T G w. T = 2 is
//            the exact closed form returning exact {0, 1} at the ends (the reference codes
//            clamp to 0.001 / 0.999); T > 2 starts from the best pair and runs Frank-Wolfe
//            with exact line search (first index on ties).
//   min_norm (the exact MGDA problem): the same w by Wolfe's minimum-norm-point algorithm
//            (Wolfe 1976) on G: a corral of affinely independent gradients, each minor cycle an
//            exact affine minimisation (a KKT solve), finite; optimal to rounding, where
//            Frank-Wolfe stops short of the optimum once T > 2 and the gradients conflict.
//   peltr    (Lin et al., RecSys 2019, PECsolver): relaxed KKT solve of
//            min ||J^T w||^2 s.t. sum w = 1 (w = what + c), minimum-norm (pseudo-inverse)
//            solution, then Euclidean projection of what onto {v >= 0, sum v = 1 - sum c}.
//   cagrad   (Liu et al., NeurIPS 2021): the dual w = argmin_{w in simplex} b^T w + a sqrt(w^T G w),
//            b = G 1 / T, a = c |g0| (g0 the mean gradient), by Wolfe-style active sets whose
//            face minimisers have a closed form (two bordered solves), finite.
//   dual_cone (Quinton & Rey 2024, Proposition 1; UPGrad and DualProj): v = argmin v^T G v
//            subject to v >= u, whose J^T v is the projection of J^T u onto the dual cone
//            {x : J x >= 0}. An active-set (Lawson-Hanson) solve on z = v - u >= 0: exact
//            Cholesky solves on the free set, finite; G positive definite for a unique v.
//
// Zero gradients: a diagonal G_jj <= 0 (a zero gradient, or rounding below zero) is never
// projected onto. Nothing here allocates or throws: the caller passes scratch buffers of
// the sizes given by the *_scratch functions and gets a status code back.
#pragma once

#include <cmath>
#include <cstdint>

#include "mtlk/macros.h"

namespace mtlk {

enum SolverStatus : int {
  kSolverOk = 0,
  kSolverNonFiniteGram = 1,    // a NaN or +-inf entry in G
  kSolverBadOrder = 2,         // a row of order is not a permutation of 0..T-1
  kSolverBadTarget = 3,        // a gradvac target outside [-1, 1] (or NaN)
  kSolverBadLowerBounds = 4,   // a PE-LTR lower bound < 0 or NaN, or sum > 1 + 1e-12
  kSolverNonFiniteBound = 5,   // a NaN or +-inf entry in a dual-cone bound u
};

// Relative epsilon of the GradVac cosine and adjustment denominators: LibMTL's absolute 1e-8,
// times max_k G_kk (cosine) or its square root (adjustment).
constexpr double kGradVacEps = 1e-8;
// Slack on sum(lower_bounds) <= 1.
constexpr double kLowerBoundsSlack = 1e-12;
// PE-LTR numerical rank: a pivoted-Cholesky pivot of G / max_k G_kk at or below this is zero.
constexpr double kPeltrRankTol = 1e-10;
// PE-LTR: the all-ones vector counts as outside range(G) when its squared residual
// from range(G), divided by T, exceeds this.
constexpr double kPeltrRangeTol = 1e-10;

// Scratch sizes (doubles) of one problem.
MTLK_HOST_DEVICE int64_t pcgrad_scratch(int64_t T) { return 2 * T; }
MTLK_HOST_DEVICE int64_t gradvac_scratch(int64_t T) { return 2 * T; }
MTLK_HOST_DEVICE int64_t mgda_scratch(int64_t T) { return T; }
MTLK_HOST_DEVICE int64_t min_norm_scratch(int64_t T) { return (T + 2) * (T + 2) + 6 * (T + 2); }
MTLK_HOST_DEVICE int64_t peltr_scratch(int64_t T) { return 2 * T * T + 6 * T; }
MTLK_HOST_DEVICE int64_t dual_cone_scratch(int64_t T) { return T * T + 5 * T; }
MTLK_HOST_DEVICE int64_t cagrad_scratch(int64_t T) { return (T + 1) * (T + 1) + 6 * (T + 1) + 3 * T; }

MTLK_HOST_DEVICE double clamp0(double v) { return v > 0.0 ? v : 0.0; }

MTLK_HOST_DEVICE bool all_finite(const double* v, int64_t n) {
  bool ok = true;
  for (int64_t k = 0; k < n; ++k) ok = ok && (v[k] - v[k] == 0.0);  // false for NaN and +-inf
  return ok;
}

// True when ord[0..T) is a permutation of 0..T-1 (bit set for T <= 64, pairwise otherwise).
MTLK_HOST_DEVICE bool is_permutation(const int64_t* ord, int64_t T) {
  if (T <= 64) {
    uint64_t seen = 0;
    for (int64_t k = 0; k < T; ++k) {
      const int64_t j = ord[k];
      if (j < 0 || j >= T) return false;
      const uint64_t bit = uint64_t(1) << j;
      if (seen & bit) return false;
      seen |= bit;
    }
    return true;
  }
  for (int64_t k = 0; k < T; ++k) {
    const int64_t j = ord[k];
    if (j < 0 || j >= T) return false;
    for (int64_t l = 0; l < k; ++l) {
      if (ord[l] == j) return false;
    }
  }
  return true;
}

// Coefficients c^(i) of task i in the PCGrad / GradVac recurrences start as e_i, with
// Gc = G c = column i of G.
MTLK_HOST_DEVICE void start_coefficients(const double* G, int64_t T, int64_t i, double* c, double* Gc) {
  for (int64_t k = 0; k < T; ++k) {
    c[k] = k == i ? 1.0 : 0.0;
    Gc[k] = G[k * T + i];
  }
}

// c_j += delta, keeping Gc = G c up to date (column j of G).
MTLK_HOST_DEVICE void add_coefficient(const double* G, int64_t T, int64_t j, double delta, double* c,
                                      double* Gc) {
  c[j] += delta;
  for (int64_t k = 0; k < T; ++k) Gc[k] += delta * G[k * T + j];
}

// PCGrad weights of one problem. G [T, T], order [T, T] (row i: the order in which task i is
// projected; i itself is skipped), w [T] out, scratch pcgrad_scratch(T).
MTLK_HOST_DEVICE int pcgrad_solve(const double* G, const int64_t* order, int64_t T, double* w,
                                  double* scratch) {
  for (int64_t k = 0; k < T; ++k) w[k] = 0.0;
  if (!all_finite(G, T * T)) return kSolverNonFiniteGram;
  double* c = scratch;
  double* Gc = scratch + T;
  for (int64_t i = 0; i < T; ++i) {
    const int64_t* ord = order + i * T;
    if (!is_permutation(ord, T)) return kSolverBadOrder;
    start_coefficients(G, T, i, c, Gc);
    for (int64_t k = 0; k < T; ++k) {
      const int64_t j = ord[k];
      if (j == i) continue;
      const double ip = Gc[j];
      const double gjj = G[j * T + j];
      if (ip < 0.0 && gjj > 0.0) add_coefficient(G, T, j, -ip / gjj, c, Gc);
    }
    for (int64_t k = 0; k < T; ++k) w[k] += c[k];
  }
  return kSolverOk;
}

// GradVac weights of one problem; target [T, T] (phihat, row i = task i) is read and
// updated in place by the EMA with rate beta (every visited pair, or only the adjusted ones).
// Scratch gradvac_scratch(T).
MTLK_HOST_DEVICE int gradvac_solve(const double* G, const int64_t* order, double* target, double beta,
                                   bool every_pair, int64_t T, double* w, double* scratch) {
  for (int64_t k = 0; k < T; ++k) w[k] = 0.0;
  if (!all_finite(G, T * T)) return kSolverNonFiniteGram;
  for (int64_t k = 0; k < T * T; ++k) {
    if (!(target[k] >= -1.0 && target[k] <= 1.0)) return kSolverBadTarget;
  }
  for (int64_t i = 0; i < T; ++i) {
    if (!is_permutation(order + i * T, T)) return kSolverBadOrder;
  }
  double scale = 0.0;
  for (int64_t k = 0; k < T; ++k) scale = G[k * T + k] > scale ? G[k * T + k] : scale;
  if (!(scale > 0.0)) scale = 1.0;  // every gradient is zero: no pair is ever adjusted
  const double eps_cos = kGradVacEps * scale;
  const double eps_adjust = kGradVacEps * sqrt(scale);
  double* c = scratch;
  double* Gc = scratch + T;
  for (int64_t i = 0; i < T; ++i) {
    const int64_t* ord = order + i * T;
    start_coefficients(G, T, i, c, Gc);
    double cGc = G[i * T + i];
    for (int64_t k = 0; k < T; ++k) {
      const int64_t j = ord[k];
      if (j == i) continue;
      const double gjj = G[j * T + j];
      const double norm_c = sqrt(clamp0(cGc));
      const double norm_j = sqrt(clamp0(gjj));
      const double raw = Gc[j] / (norm_c * norm_j + eps_cos);
      const double phi = raw < -1.0 ? -1.0 : (raw > 1.0 ? 1.0 : raw);
      const double phihat = target[i * T + j];
      const bool adjust = phi < phihat && gjj > 0.0;
      if (adjust) {
        const double root_hat = sqrt(clamp0(1.0 - phihat * phihat));
        const double root_phi = sqrt(clamp0(1.0 - phi * phi));
        const double delta =
            norm_c * (phihat * root_phi - phi * root_hat) / (norm_j * root_hat + eps_adjust);
        add_coefficient(G, T, j, delta, c, Gc);
        cGc = 0.0;
        for (int64_t l = 0; l < T; ++l) cGc += c[l] * Gc[l];
      }
      if (adjust || every_pair) target[i * T + j] = (1.0 - beta) * phihat + beta * phi;
    }
    for (int64_t k = 0; k < T; ++k) w[k] += c[k];
  }
  return kSolverOk;
}

// Min-norm point of the segment [v1, v2] given a = |v1|^2, b = <v1, v2>, c = |v2|^2:
// gamma is the weight on v1 (1 - gamma on v2), cost = |gamma v1 + (1 - gamma) v2|^2.
// Exact ends: b >= a gives gamma = 1 (tested first, so v1 = v2 and two zero vectors are no
// 0/0), b >= c gives gamma = 0. The reference codes return 0.999 / 0.001 there instead.
MTLK_HOST_DEVICE void min_norm_pair(double a, double b, double c, double* gamma, double* cost) {
  if (b >= a) {
    *gamma = 1.0;
    *cost = a;
  } else if (b >= c) {
    *gamma = 0.0;
    *cost = c;
  } else {
    *gamma = (c - b) / (a + c - 2.0 * b);
    *cost = c + *gamma * (b - c);
  }
}

// MGDA min-norm weights of one problem (w [T] out, scratch mgda_scratch(T)).
// T = 1: w = 1. T = 2: min_norm_pair. T > 2: the best pair (smallest cost, first pair in
// (i, j) order on ties) then Frank-Wolfe: t = argmin_r (G w)_r (first on ties), exact line
// search between w and e_t, w <- gamma w + (1 - gamma) e_t; stops after an iteration whose
// step 1 - gamma is < tol (or zero), or after max_iter iterations.
MTLK_HOST_DEVICE int mgda_solve(const double* G, int64_t T, int64_t max_iter, double tol, double* w,
                                double* scratch) {
  for (int64_t k = 0; k < T; ++k) w[k] = 0.0;
  if (!all_finite(G, T * T)) return kSolverNonFiniteGram;
  if (T <= 1) {
    if (T == 1) w[0] = 1.0;
    return kSolverOk;
  }
  int64_t bi = 0, bj = 1;
  double bgamma = 1.0, bcost = 0.0;
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = i + 1; j < T; ++j) {
      double gamma, cost;
      min_norm_pair(G[i * T + i], G[i * T + j], G[j * T + j], &gamma, &cost);
      if ((i == 0 && j == 1) || cost < bcost) {
        bi = i, bj = j, bgamma = gamma, bcost = cost;
      }
    }
  }
  w[bi] = bgamma;
  w[bj] = 1.0 - bgamma;
  if (T == 2) return kSolverOk;

  double* Gw = scratch;
  for (int64_t r = 0; r < T; ++r) Gw[r] = bgamma * G[r * T + bi] + (1.0 - bgamma) * G[r * T + bj];
  for (int64_t it = 0; it < max_iter; ++it) {
    int64_t t = 0;
    double wGw = 0.0;
    for (int64_t r = 0; r < T; ++r) {
      wGw += w[r] * Gw[r];
      if (Gw[r] < Gw[t]) t = r;
    }
    double gamma, cost;
    min_norm_pair(wGw, Gw[t], G[t * T + t], &gamma, &cost);
    const double step = 1.0 - gamma;
    for (int64_t r = 0; r < T; ++r) {
      w[r] *= gamma;
      Gw[r] = gamma * Gw[r] + step * G[r * T + t];
    }
    w[t] += step;
    if (step < tol || step <= 0.0) break;
  }
  return kSolverOk;
}

// Relative tolerances of min_norm_solve (times max_k G_kk): a candidate must lower <g, x> below
// |x|^2 by more than kMinNormOptTol to enter; a corral weight at or below kMinNormPosTol leaves.
constexpr double kMinNormOptTol = 1e-13;
constexpr double kMinNormPosTol = 1e-14;

// The bordered solves of a corral S (s indices, as doubles) on Gn = G / scale (every entry at most
// 1, like the ones): [Gn_SS 1; 1^T 0] [p; .] = [0; 1] (p: the corral's affine min-norm point) and,
// when lin is given, [Gn_SS 1; 1^T 0] [q; .] = [-lin_S; 0] (q: the direction of a linear term
// within the corral's affine hull), by Gaussian elimination with partial pivoting in M ((s + 1)^2
// scratch). False when singular (a pivot below 1e-14): the corral is affinely dependent.
MTLK_HOST_DEVICE bool corral_solve(const double* G, int64_t T, const double* S, int64_t s, double scale,
                                   const double* lin, double* M, double* p, double* q) {
  const int64_t n = s + 1;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double v;
      if (r < s && c < s) v = G[static_cast<int64_t>(S[r]) * T + static_cast<int64_t>(S[c])] / scale;
      else v = (r == s && c == s) ? 0.0 : 1.0;
      M[r * n + c] = v;
    }
    p[r] = r == s ? 1.0 : 0.0;
    if (lin != nullptr) q[r] = r == s ? 0.0 : -lin[static_cast<int64_t>(S[r])];
  }
  for (int64_t k = 0; k < n; ++k) {
    int64_t piv = k;
    for (int64_t r = k + 1; r < n; ++r) piv = fabs(M[r * n + k]) > fabs(M[piv * n + k]) ? r : piv;
    if (!(fabs(M[piv * n + k]) > 1e-14)) return false;
    if (piv != k) {
      for (int64_t c = 0; c < n; ++c) {
        const double t = M[k * n + c];
        M[k * n + c] = M[piv * n + c];
        M[piv * n + c] = t;
      }
      double t = p[k];
      p[k] = p[piv];
      p[piv] = t;
      if (lin != nullptr) {
        t = q[k];
        q[k] = q[piv];
        q[piv] = t;
      }
    }
    for (int64_t r = k + 1; r < n; ++r) {
      const double f = M[r * n + k] / M[k * n + k];
      for (int64_t c = k; c < n; ++c) M[r * n + c] -= f * M[k * n + c];
      p[r] -= f * p[k];
      if (lin != nullptr) q[r] -= f * q[k];
    }
  }
  for (int64_t k = n - 1; k >= 0; --k) {
    double vp = p[k], vq = lin != nullptr ? q[k] : 0.0;
    for (int64_t c = k + 1; c < n; ++c) {
      vp -= M[k * n + c] * p[c];
      if (lin != nullptr) vq -= M[k * n + c] * q[c];
    }
    p[k] = vp / M[k * n + k];
    if (lin != nullptr) q[k] = vq / M[k * n + k];
  }
  return true;  // p[0..s) the weights, p[s] = -mu
}

// One step of a corral (s weights lam on the indices S, as doubles) by theta * dir: the entries
// at or below pos_tol leave, the rest are renormalised to sum 1 (a corral emptied by rounding
// keeps `enter` alone). Returns the new size. Shared by min_norm_solve and cagrad_solve.
MTLK_HOST_DEVICE int64_t corral_step(double* S, double* lam, const double* dir, int64_t s, double theta,
                                     double pos_tol, int64_t enter) {
  double total = 0.0;
  int64_t kept = 0;
  for (int64_t i = 0; i < s; ++i) {
    const double v = lam[i] + theta * dir[i];
    if (v > pos_tol) {
      S[kept] = S[i];
      lam[kept] = v;
      total += v;
      ++kept;
    }
  }
  if (kept == 0) {  // cannot happen in exact arithmetic
    S[0] = static_cast<double>(enter);
    lam[0] = 1.0;
    kept = 1;
    total = 1.0;
  }
  for (int64_t i = 0; i < kept; ++i) lam[i] /= total;
  return kept;
}

// Exact min-norm weights of one problem (w [T] out, scratch min_norm_scratch(T)): Wolfe's
// algorithm. Start at the shortest gradient (first on ties); a major cycle adds the gradient
// with the smallest <g_j, x>, if it lowers the norm; minor cycles move to the corral's affine
// minimiser, stepping back to the boundary and dropping a gradient whenever that minimiser
// leaves the simplex. All-zero G gives e_0; T = 1 gives 1.
MTLK_HOST_DEVICE int min_norm_solve(const double* G, int64_t T, double* w, double* scratch) {
  for (int64_t k = 0; k < T; ++k) w[k] = 0.0;
  if (!all_finite(G, T * T)) return kSolverNonFiniteGram;
  if (T <= 0) return kSolverOk;
  double* M = scratch;                   // (T + 2)^2
  double* S = M + (T + 2) * (T + 2);     // corral indices (as doubles), T + 2
  double* lam = S + (T + 2);             // corral weights
  double* alpha = lam + (T + 2);         // affine minimiser (+ multiplier)
  double* Gx = alpha + (T + 2);          // <g_j, x>, T
  double scale = 0.0;
  int64_t first = 0;
  for (int64_t k = 0; k < T; ++k) {
    scale = G[k * T + k] > scale ? G[k * T + k] : scale;
    if (G[k * T + k] < G[first * T + first]) first = k;
  }
  if (!(scale > 0.0)) {  // every gradient is zero: any point is optimal
    w[0] = 1.0;
    return kSolverOk;
  }
  int64_t s = 1;
  S[0] = static_cast<double>(first);
  lam[0] = 1.0;
  for (int64_t major = 0; major < 4 * T + 4; ++major) {
    double xx = 0.0;
    for (int64_t j = 0; j < T; ++j) {
      double v = 0.0;
      for (int64_t i = 0; i < s; ++i) v += G[j * T + static_cast<int64_t>(S[i])] * lam[i];
      Gx[j] = v;
    }
    for (int64_t i = 0; i < s; ++i) xx += lam[i] * Gx[static_cast<int64_t>(S[i])];
    int64_t enter = 0;
    for (int64_t j = 1; j < T; ++j) enter = Gx[j] < Gx[enter] ? j : enter;
    if (!(Gx[enter] < xx - kMinNormOptTol * scale)) break;  // no gradient lowers the norm: optimal
    bool member = false;
    for (int64_t i = 0; i < s; ++i) member = member || static_cast<int64_t>(S[i]) == enter;
    if (member || s == T + 1) break;  // rounding: nothing left to gain
    S[s] = static_cast<double>(enter);
    lam[s] = 0.0;
    ++s;
    bool stuck = false;
    for (int64_t minor = 0; minor < T + 2; ++minor) {
      if (!corral_solve(G, T, S, s, scale, nullptr, M, alpha, nullptr)) {  // affinely dependent: undo the entry
        stuck = true;
        --s;
        break;
      }
      bool inside = true;
      for (int64_t i = 0; i < s; ++i) inside = inside && alpha[i] > kMinNormPosTol;
      if (inside) {
        for (int64_t i = 0; i < s; ++i) lam[i] = alpha[i];
        break;
      }
      double theta = 1.0;  // the largest step from lam towards alpha that stays in the simplex
      for (int64_t i = 0; i < s; ++i) {
        if (alpha[i] <= kMinNormPosTol && lam[i] - alpha[i] > 0.0) {
          const double t = lam[i] / (lam[i] - alpha[i]);
          theta = t < theta ? t : theta;
        }
      }
      for (int64_t i = 0; i < s; ++i) alpha[i] -= lam[i];  // the direction
      s = corral_step(S, lam, alpha, s, theta, kMinNormPosTol, enter);
    }
    if (stuck) break;
  }
  for (int64_t i = 0; i < s; ++i) w[static_cast<int64_t>(S[i])] += lam[i];
  return kSolverOk;
}

// Euclidean projection of u [T] onto {v >= 0, sum v = s} (s > 0), sort-based (Held, Wolfe
// and Crowder 1974; Duchi et al. 2008). v may alias u; sorted [T] is scratch.
MTLK_HOST_DEVICE void project_scaled_simplex(const double* u, int64_t T, double s, double* v,
                                             double* sorted) {
  for (int64_t k = 0; k < T; ++k) {  // insertion sort, descending
    const double x = u[k];
    int64_t l = k;
    for (; l > 0 && sorted[l - 1] < x; --l) sorted[l] = sorted[l - 1];
    sorted[l] = x;
  }
  double cum = 0.0, theta = 0.0;
  for (int64_t k = 0; k < T; ++k) {
    cum += sorted[k];
    const double th = (cum - s) / static_cast<double>(k + 1);
    if (sorted[k] - th > 0.0) theta = th;
  }
  for (int64_t k = 0; k < T; ++k) v[k] = clamp0(u[k] - theta);
}

// True when lower [T] is a valid set of PE-LTR lower bounds: c >= 0 and sum c <= 1 + slack.
MTLK_HOST_DEVICE bool lower_bounds_valid(const double* lower, int64_t T) {
  double sum = 0.0;
  for (int64_t k = 0; k < T; ++k) {
    if (!(lower[k] >= 0.0 && lower[k] <= 1.0 + kLowerBoundsSlack)) return false;
    sum += lower[k];
  }
  return sum <= 1.0 + kLowerBoundsSlack;
}

// PE-LTR (PECsolver) weights of one problem: lower [T] bounds c, w [T] out, scratch
// peltr_scratch(T).
//
// Step 1, relaxed problem: with w = what + c the KKT system M [what; lambda] = z,
// M = [[G, 1], [1^T, 0]], z = [-G c; 1 - sum c], is always consistent (a null vector of M
// is (x, 0) with G x = 0, 1^T x = 0), so its pseudo-inverse solution is the one with the
// smallest |what| among the solutions. Computed on G / max_k G_kk from a pivoted Cholesky
// factor G = B B^T (rank r, pivots <= kPeltrRankTol dropped) and Q = orthonormal basis of
// range(B) by modified Gram-Schmidt:
//   1 in range(G):     w0 = G^+ 1 / (1^T G^+ 1)   (the affine min-norm point, lambda != 0);
//   1 not in range(G): w0 = r / |r|^2, r = 1 - Q Q^T 1  (G w0 = 0: a zero-norm combination);
//   what = P (w0 - c), P = projector onto range(G) + span(1).
// Step 2: v = projection of what onto {v >= 0, sum v = 1 - sum c}; w = v + c.
// T = 1 gives w = 1; sum c >= 1 gives w = c; G = 0 gives w = c + (1 - sum c) / T.
MTLK_HOST_DEVICE int peltr_solve(const double* G, const double* lower, int64_t T, double* w,
                                 double* scratch) {
  for (int64_t k = 0; k < T; ++k) w[k] = 0.0;
  if (!all_finite(G, T * T)) return kSolverNonFiniteGram;
  if (!lower_bounds_valid(lower, T)) return kSolverBadLowerBounds;
  if (T <= 1) {
    if (T == 1) w[0] = 1.0;
    return kSolverOk;
  }
  double sum_c = 0.0, scale = 0.0;
  for (int64_t k = 0; k < T; ++k) {
    sum_c += lower[k];
    scale = G[k * T + k] > scale ? G[k * T + k] : scale;
  }
  const double s = 1.0 - sum_c;
  if (s <= 0.0) {
    for (int64_t k = 0; k < T; ++k) w[k] = lower[k];
    return kSolverOk;
  }
  double* B = scratch;               // [r, T]: column k of the factor, stored as a row
  double* R = B + T * T;             // [T, T] upper triangle of B = Q R (row-major)
  double* d = R + T * T;             // residual diagonal of the pivoted Cholesky
  double* y = d + T;                 // Q^T 1, then R^{-1} Q^T 1, then R^{-T} R^{-1} Q^T 1
  double* w0 = y + T;
  double* qc = w0 + T;               // Q^T (w0 - c)
  double* what = qc + T;
  double* sorted = what + T;

  // Pivoted Cholesky (left-looking) of Gn = G / scale; rows of B hold the factor columns.
  int64_t r = 0;
  if (scale > 0.0) {
    const double inv_scale = 1.0 / scale;
    for (int64_t k = 0; k < T; ++k) d[k] = G[k * T + k] * inv_scale;
    for (; r < T; ++r) {
      int64_t p = 0;
      for (int64_t k = 1; k < T; ++k) p = d[k] > d[p] ? k : p;
      if (!(d[p] > kPeltrRankTol)) break;
      const double inv_root = 1.0 / sqrt(d[p]);
      double* b = B + r * T;
      for (int64_t k = 0; k < T; ++k) {
        double v = G[k * T + p] * inv_scale;
        for (int64_t l = 0; l < r; ++l) v -= B[l * T + k] * B[l * T + p];
        b[k] = v * inv_root;
      }
      for (int64_t k = 0; k < T; ++k) d[k] -= b[k] * b[k];
      d[p] = 0.0;
    }
  }
  // Modified Gram-Schmidt: B (r rows) becomes Q, with B_old = Q R.
  for (int64_t k = 0; k < r; ++k) {
    double* qk = B + k * T;
    for (int64_t l = 0; l < k; ++l) {
      const double* ql = B + l * T;
      double dot = 0.0;
      for (int64_t m = 0; m < T; ++m) dot += ql[m] * qk[m];
      R[l * T + k] = dot;
      for (int64_t m = 0; m < T; ++m) qk[m] -= dot * ql[m];
    }
    double nrm = 0.0;
    for (int64_t m = 0; m < T; ++m) nrm += qk[m] * qk[m];
    nrm = sqrt(nrm);
    R[k * T + k] = nrm;
    const double inv = 1.0 / nrm;
    for (int64_t m = 0; m < T; ++m) qk[m] *= inv;
  }
  // Residual of the all-ones vector from range(Q): w0 holds it for now.
  for (int64_t k = 0; k < r; ++k) {
    double dot = 0.0;
    for (int64_t m = 0; m < T; ++m) dot += B[k * T + m];
    y[k] = dot;
  }
  double res2 = 0.0;
  for (int64_t m = 0; m < T; ++m) {
    double v = 1.0;
    for (int64_t k = 0; k < r; ++k) v -= y[k] * B[k * T + m];
    w0[m] = v;
    res2 += v * v;
  }
  const bool ones_outside = res2 > kPeltrRangeTol * static_cast<double>(T);
  if (ones_outside) {
    for (int64_t m = 0; m < T; ++m) w0[m] /= res2;
  } else {
    // w0 = Q R^{-T} R^{-1} Q^T 1 / |R^{-1} Q^T 1|^2 (= G^+ 1 / 1^T G^+ 1 on range(G)).
    for (int64_t k = r - 1; k >= 0; --k) {  // y <- R^{-1} y
      double v = y[k];
      for (int64_t l = k + 1; l < r; ++l) v -= R[k * T + l] * y[l];
      y[k] = v / R[k * T + k];
    }
    double uu = 0.0;
    for (int64_t k = 0; k < r; ++k) uu += y[k] * y[k];
    for (int64_t k = 0; k < r; ++k) {  // y <- R^{-T} y
      double v = y[k];
      for (int64_t l = 0; l < k; ++l) v -= R[l * T + k] * y[l];
      y[k] = v / R[k * T + k];
    }
    for (int64_t m = 0; m < T; ++m) {
      double v = 0.0;
      for (int64_t k = 0; k < r; ++k) v += y[k] * B[k * T + m];
      w0[m] = v / uu;
    }
  }
  // what = P (w0 - c); P = Q Q^T, plus the unit residual direction when 1 is outside range(G).
  for (int64_t m = 0; m < T; ++m) what[m] = w0[m] - lower[m];
  for (int64_t k = 0; k < r; ++k) {
    double dot = 0.0;
    for (int64_t m = 0; m < T; ++m) dot += B[k * T + m] * what[m];
    qc[k] = dot;
  }
  if (ones_outside) {
    // the residual direction e = w0 / |w0| (w0 = r / |r|^2 is orthogonal to Q)
    double ww = 0.0, ew = 0.0;
    for (int64_t m = 0; m < T; ++m) {
      ww += w0[m] * w0[m];
      ew += w0[m] * what[m];
    }
    const double coef = ew / ww;
    for (int64_t m = 0; m < T; ++m) {
      double v = coef * w0[m];
      for (int64_t k = 0; k < r; ++k) v += qc[k] * B[k * T + m];
      what[m] = v;
    }
  } else {
    for (int64_t m = 0; m < T; ++m) {
      double v = 0.0;
      for (int64_t k = 0; k < r; ++k) v += qc[k] * B[k * T + m];
      what[m] = v;
    }
  }
  project_scaled_simplex(what, T, s, what, sorted);
  for (int64_t m = 0; m < T; ++m) w[m] = what[m] + lower[m];
  return kSolverOk;
}

// Relative tolerances of dual_cone_solve: a bound leaves the active set when its gradient
// (G v)_j is below -kDualConeOptTol * max_k G_kk * (|u|_inf + |z|_inf); a free variable at or
// below kDualConePosTol * (|u|_inf + |z|_inf) returns to its bound; a Cholesky pivot at or below
// kDualConePivotTol * max_k G_kk means the free set's G is singular.
constexpr double kDualConeOptTol = 1e-13;
constexpr double kDualConePosTol = 1e-15;
constexpr double kDualConePivotTol = 1e-14;

// s_P = -(G_PP)^{-1} q_P for the p indices F (as doubles) by Cholesky into L (p x p); false when
// a pivot is at or below `pivot` (G_PP singular).
MTLK_HOST_DEVICE bool free_set_solve(const double* G, int64_t T, const double* F, int64_t p, double pivot,
                                     const double* q, double* L, double* s) {
  for (int64_t i = 0; i < p; ++i) {
    const int64_t fi = static_cast<int64_t>(F[i]);
    for (int64_t j = 0; j <= i; ++j) {
      double v = G[fi * T + static_cast<int64_t>(F[j])];
      for (int64_t k = 0; k < j; ++k) v -= L[i * p + k] * L[j * p + k];
      if (i == j) {
        if (!(v > pivot)) return false;
        L[i * p + i] = sqrt(v);
      } else {
        L[i * p + j] = v / L[j * p + j];
      }
    }
  }
  for (int64_t i = 0; i < p; ++i) {  // L y = -q_F
    double v = -q[static_cast<int64_t>(F[i])];
    for (int64_t k = 0; k < i; ++k) v -= L[i * p + k] * s[k];
    s[i] = v / L[i * p + i];
  }
  for (int64_t i = p - 1; i >= 0; --i) {  // L^T s = y
    double v = s[i];
    for (int64_t k = i + 1; k < p; ++k) v -= L[k * p + i] * s[k];
    s[i] = v / L[i * p + i];
  }
  return true;
}

// Dual-cone projection weights of one problem: u [T] bounds, v [T] out, scratch
// dual_cone_scratch(T). With z = v - u the problem is min z^T G z + 2 z^T G u, z >= 0; starting
// from z = 0, each major step frees the bound with the most negative (G v)_j, each minor step
// solves G_FF z_F = -(G u)_F on the free set F and, when that leaves z >= 0, steps back to the
// boundary and returns the variables that reach 0 to their bounds. Stops at the KKT point
// ((G v)_j >= 0 at every bound) or, for a singular free set, at the last point reached. G = 0 or
// T = 0 gives v = u.
MTLK_HOST_DEVICE int dual_cone_solve(const double* G, const double* u, int64_t T, double* v, double* scratch) {
  for (int64_t k = 0; k < T; ++k) v[k] = 0.0;
  if (!all_finite(G, T * T)) return kSolverNonFiniteGram;
  if (!all_finite(u, T)) return kSolverNonFiniteBound;
  double scale = 0.0, umax = 0.0;
  for (int64_t k = 0; k < T; ++k) {
    scale = G[k * T + k] > scale ? G[k * T + k] : scale;
    umax = fabs(u[k]) > umax ? fabs(u[k]) : umax;
    v[k] = u[k];
  }
  if (!(scale > 0.0)) return kSolverOk;
  double* L = scratch;      // T * T
  double* z = L + T * T;    // T
  double* s = z + T;        // T
  double* q = s + T;        // G u, T
  double* g = q + T;        // G v, T
  double* F = g + T;        // free set (indices as doubles), T
  for (int64_t i = 0; i < T; ++i) {
    double v_i = 0.0;
    for (int64_t j = 0; j < T; ++j) v_i += G[i * T + j] * u[j];
    q[i] = v_i;
    z[i] = 0.0;
  }
  int64_t p = 0;
  for (int64_t major = 0; major < 3 * T + 3; ++major) {
    double zmax = 0.0;
    for (int64_t k = 0; k < p; ++k) {
      const double zk = z[static_cast<int64_t>(F[k])];
      zmax = zk > zmax ? zk : zmax;
    }
    const double size = umax + zmax;
    for (int64_t i = 0; i < T; ++i) {
      double gi = q[i];
      for (int64_t k = 0; k < p; ++k) gi += G[i * T + static_cast<int64_t>(F[k])] * z[static_cast<int64_t>(F[k])];
      g[i] = gi;
    }
    int64_t enter = -1;
    double best = -kDualConeOptTol * scale * size;
    for (int64_t i = 0; i < T; ++i) {
      bool free = false;
      for (int64_t k = 0; k < p; ++k) free = free || static_cast<int64_t>(F[k]) == i;
      if (!free && g[i] < best) {
        best = g[i];
        enter = i;
      }
    }
    if (enter < 0) break;  // KKT: no bound whose release lowers the objective
    F[p++] = static_cast<double>(enter);
    bool stuck = false;
    for (int64_t minor = 0; minor < T + 2 && p > 0; ++minor) {
      if (!free_set_solve(G, T, F, p, kDualConePivotTol * scale, q, L, s)) {
        stuck = true;  // singular on the free set: keep the point reached
        break;
      }
      bool inside = true;
      for (int64_t k = 0; k < p; ++k) inside = inside && s[k] > kDualConePosTol * size;
      if (inside) {
        for (int64_t k = 0; k < p; ++k) z[static_cast<int64_t>(F[k])] = s[k];
        break;
      }
      if (minor == 0 && !(s[p - 1] > 0.0)) {  // rounding: the entering bound does not move
        stuck = true;
        break;
      }
      double alpha = 1.0;  // the largest step from z towards s that keeps z >= 0
      for (int64_t k = 0; k < p; ++k) {
        const double zk = z[static_cast<int64_t>(F[k])];
        if (s[k] <= kDualConePosTol * size && zk - s[k] > 0.0) {
          const double t = zk / (zk - s[k]);
          alpha = t < alpha ? t : alpha;
        }
      }
      int64_t kept = 0;
      for (int64_t k = 0; k < p; ++k) {
        const int64_t fk = static_cast<int64_t>(F[k]);
        const double val = z[fk] + alpha * (s[k] - z[fk]);
        if (val > kDualConePosTol * size) {
          z[fk] = val;
          F[kept++] = F[k];
        } else {
          z[fk] = 0.0;
        }
      }
      p = kept;
    }
    if (stuck) {
      if (p > 0 && z[static_cast<int64_t>(F[p - 1])] == 0.0) --p;
      break;
    }
  }
  for (int64_t k = 0; k < T; ++k) v[k] = u[k] + z[k];
  return kSolverOk;
}

// Relative tolerances of cagrad_solve (as min_norm_solve's): an index enters when its gradient
// is below the current point's by more than kCAGradOptTol times the gradient scale; a weight at
// or below kCAGradPosTol leaves.
constexpr double kCAGradOptTol = 1e-13;
constexpr double kCAGradPosTol = 1e-14;

// CAGrad's dual weights of one problem: w [T] out (in the simplex), scratch cagrad_scratch(T).
// Minimises f(w) = b^T w + a |J^T w| with b = G 1 / T and a = c sqrt(1^T G 1) / T (c >= 0), on
// G / max_k G_kk (the minimiser does not depend on the scale). Wolfe-style: start at the best
// vertex; a major cycle adds the index of smallest gradient (b + a G w / |J^T w|)_j if it beats
// the current point's; a minor cycle moves to the face's minimiser, which has the closed form
// w = p + (r / a) q with r^2 = p^T G p / (1 + b^T q / a^2) (corral_solve), or, when
// 1 + b^T q / a^2 <= 0 (f unbounded below along q on the face's affine hull), along q; stepping
// back to the boundary and dropping an index whenever the move leaves the simplex. Stops at a
// point with J^T w = 0 (Pareto stationary) or when a face is affinely dependent.
MTLK_HOST_DEVICE int cagrad_solve(const double* G, int64_t T, double c, double* w, double* scratch) {
  for (int64_t k = 0; k < T; ++k) w[k] = 0.0;
  if (!all_finite(G, T * T)) return kSolverNonFiniteGram;
  if (T <= 0) return kSolverOk;
  double scale = 0.0;
  for (int64_t k = 0; k < T; ++k) scale = G[k * T + k] > scale ? G[k * T + k] : scale;
  double* M = scratch;                   // (T + 1)^2
  double* S = M + (T + 1) * (T + 1);     // face indices (as doubles), T + 1
  double* lam = S + (T + 1);             // face weights
  double* p = lam + (T + 1);             // bordered solutions
  double* q = p + (T + 1);
  double* target = q + (T + 1);
  double* dir = target + (T + 1);
  double* bn = dir + (T + 1);            // b / scale, T
  double* Gw = bn + T;                   // Gn w, T
  double* grad = Gw + T;                 // the gradient of f, T
  if (!(scale > 0.0)) {  // all gradients zero: any weights
    w[0] = 1.0;
    return kSolverOk;
  }
  double total = 0.0;
  for (int64_t i = 0; i < T; ++i) {
    double v = 0.0;
    for (int64_t j = 0; j < T; ++j) v += G[i * T + j];
    bn[i] = v / (static_cast<double>(T) * scale);
    total += v;
  }
  const double a = c * sqrt(total > 0.0 ? total / scale : 0.0) / static_cast<double>(T);
  int64_t first = 0;  // the best vertex: f(e_i) = b_i + a |g_i|
  for (int64_t i = 1; i < T; ++i) {
    const double fi = bn[i] + a * sqrt(G[i * T + i] / scale);
    const double f0 = bn[first] + a * sqrt(G[first * T + first] / scale);
    first = fi < f0 ? i : first;
  }
  int64_t s = 1;
  S[0] = static_cast<double>(first);
  lam[0] = 1.0;
  for (int64_t major = 0; major < 4 * T + 4 && a > 0.0; ++major) {
    double r2 = 0.0;
    for (int64_t j = 0; j < T; ++j) {
      double v = 0.0;
      for (int64_t i = 0; i < s; ++i) v += G[j * T + static_cast<int64_t>(S[i])] / scale * lam[i];
      Gw[j] = v;
    }
    for (int64_t i = 0; i < s; ++i) r2 += lam[i] * Gw[static_cast<int64_t>(S[i])];
    if (!(r2 > 0.0)) break;  // J^T w = 0: Pareto stationary
    const double r = sqrt(r2);
    double gw = 0.0, gmax = 0.0;
    for (int64_t j = 0; j < T; ++j) {
      grad[j] = bn[j] + a * Gw[j] / r;
      gmax = fabs(grad[j]) > gmax ? fabs(grad[j]) : gmax;
    }
    for (int64_t i = 0; i < s; ++i) gw += lam[i] * grad[static_cast<int64_t>(S[i])];
    int64_t enter = 0;
    for (int64_t j = 1; j < T; ++j) enter = grad[j] < grad[enter] ? j : enter;
    if (!(grad[enter] < gw - kCAGradOptTol * (gmax + a))) break;  // optimal
    bool member = false;
    for (int64_t i = 0; i < s; ++i) member = member || static_cast<int64_t>(S[i]) == enter;
    if (member || s == T) break;
    S[s] = static_cast<double>(enter);
    lam[s] = 0.0;
    ++s;
    bool stuck = false;
    for (int64_t minor = 0; minor < T + 2; ++minor) {
      if (!corral_solve(G, T, S, s, scale, bn, M, p, q)) {  // affinely dependent: undo the entry
        stuck = true;
        --s;
        break;
      }
      double pp = 0.0, bq = 0.0;
      for (int64_t i = 0; i < s; ++i) {
        bq += bn[static_cast<int64_t>(S[i])] * q[i];
        for (int64_t k = 0; k < s; ++k)
          pp += p[i] * p[k] * G[static_cast<int64_t>(S[i]) * T + static_cast<int64_t>(S[k])] / scale;
      }
      const double den = 1.0 + bq / (a * a);
      const bool bounded = den > 0.0;
      if (bounded) {
        const double rf = sqrt((pp > 0.0 ? pp : 0.0) / den);
        bool inside = true;
        for (int64_t i = 0; i < s; ++i) {
          target[i] = p[i] + rf / a * q[i];
          dir[i] = target[i] - lam[i];
          inside = inside && target[i] > kCAGradPosTol;
        }
        if (inside) {
          for (int64_t i = 0; i < s; ++i) lam[i] = target[i];
          break;
        }
      } else {
        for (int64_t i = 0; i < s; ++i) dir[i] = q[i];
      }
      double theta = bounded ? 1.0 : INFINITY;  // the largest step along dir that stays in the simplex
      for (int64_t i = 0; i < s; ++i) {
        if (dir[i] < 0.0) {
          const double t = lam[i] / -dir[i];
          theta = t < theta ? t : theta;
        }
      }
      if (!(theta < INFINITY)) {
        stuck = true;
        break;
      }
      s = corral_step(S, lam, dir, s, theta, kCAGradPosTol, enter);
    }
    if (stuck) break;
  }
  for (int64_t i = 0; i < s; ++i) w[static_cast<int64_t>(S[i])] += lam[i];
  return kSolverOk;
}

}  // namespace mtlk
