// Row math of the gate mixture, shared by the CPU and CUDA kernels.
//
// One row is one (batch b, task t) pair: X gate logits, an optional mask of the
// experts the task may see, and the resulting X probabilities.
//
//   p[x]        = exp(l[x] - m) / sum_{x' allowed} exp(l[x'] - m),  m = max allowed l
//   p[x]        = 0 for a masked expert
//   dlogit[x]   = p[x] * (h[x] - sum_x' p[x'] h[x']),  h = dL/dp
//
// Status codes are returned instead of throwing so that device code can use them.
#pragma once

#include <cmath>
#include <cstdint>

#include "mtlk/macros.h"

namespace mtlk {

MTLK_HOST_DEVICE float exp_acc(float v) { return expf(v); }
MTLK_HOST_DEVICE double exp_acc(double v) { return exp(v); }

enum GateRowStatus : int {
  kGateRowOk = 0,
  kGateRowNonFinite = 1,  // a NaN or +inf logit among the allowed experts
  kGateRowEmpty = 2,      // no allowed expert, or every allowed logit is -inf
};

// Maximum logit over the allowed experts of one row (`allowed` may be null: all allowed).
// Returns kGateRowOk, or the reason the row cannot be normalised.
template <typename in_t, typename acc_t>
MTLK_HOST_DEVICE int masked_row_max(const in_t* logits, const bool* allowed, int64_t X, acc_t* max_out) {
  acc_t m = -INFINITY;
  bool bad = false;
  for (int64_t x = 0; x < X; ++x) {
    if (allowed != nullptr && !allowed[x]) continue;
    const acc_t v = static_cast<acc_t>(logits[x]);
    if (v != v || v == INFINITY) bad = true;
    m = v > m ? v : m;
  }
  *max_out = m;
  if (bad) return kGateRowNonFinite;
  return m == -INFINITY ? kGateRowEmpty : kGateRowOk;
}

// Masked, max-subtracted softmax of one row. Writes X probabilities into `p` (acc_t
// precision) and returns a status; on a bad status `p` holds zeros.
template <typename in_t, typename acc_t>
MTLK_HOST_DEVICE int masked_softmax_row(const in_t* logits, const bool* allowed,
                                        int64_t X, acc_t* p) {
  acc_t m;
  const int status = masked_row_max(logits, allowed, X, &m);
  if (status != kGateRowOk) {
    for (int64_t x = 0; x < X; ++x) p[x] = acc_t(0);
    return status;
  }
  acc_t s = acc_t(0);
  for (int64_t x = 0; x < X; ++x) {
    const bool on = allowed == nullptr || allowed[x];
    const acc_t e = on ? exp_acc(static_cast<acc_t>(logits[x]) - m) : acc_t(0);
    p[x] = e;
    s += e;
  }
  const acc_t inv = acc_t(1) / s;
  for (int64_t x = 0; x < X; ++x) p[x] *= inv;
  return kGateRowOk;
}

// Softmax backward of one row: dlogit[x] = p[x] * (h[x] - <p, h>) where
// h = dp (+ gp when the caller also has a gradient for the probabilities).
// Masked experts have p = 0 and so get a zero gradient.
template <typename acc_t, typename out_t>
MTLK_HOST_DEVICE void softmax_backward_row(const acc_t* p, const acc_t* dp, const acc_t* gp,
                                           int64_t X, out_t* dlogit) {
  acc_t dot = acc_t(0);
  for (int64_t x = 0; x < X; ++x) {
    const acc_t h = dp[x] + (gp != nullptr ? gp[x] : acc_t(0));
    dot += p[x] * h;
  }
  for (int64_t x = 0; x < X; ++x) {
    const acc_t h = dp[x] + (gp != nullptr ? gp[x] : acc_t(0));
    dlogit[x] = static_cast<out_t>(p[x] * (h - dot));
  }
}

}  // namespace mtlk
