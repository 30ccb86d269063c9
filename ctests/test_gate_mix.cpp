// C++ tests of the gate mixture: the host/device row math in csrc/include/mtlk/gate_mix.h
// (what the CUDA kernels compute) and the CPU kernels reached through the dispatcher,
// against ATen softmax + bmm. Run by ctest; exits non-zero on the first failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <tuple>
#include <vector>

#include "mtlk/gate_mix.h"
#include "expect.h"

namespace {

bool close(const at::Tensor& a, const at::Tensor& b, double tol) {
  return at::allclose(a.to(at::kDouble), b.to(at::kDouble), tol, tol);
}

void test_row_math() {
  const double logits[4] = {1.0, 2.0, -INFINITY, 0.5};
  const bool allowed[4] = {true, false, true, true};
  double p[4];
  EXPECT(mtlk::masked_softmax_row(logits, allowed, 4, p) == mtlk::kGateRowOk);
  const double z = std::exp(1.0) + std::exp(0.5);
  EXPECT(std::abs(p[0] - std::exp(1.0) / z) < 1e-15);
  EXPECT(p[1] == 0.0 && p[2] == 0.0);
  EXPECT(std::abs(p[0] + p[3] - 1.0) < 1e-15);

  const double with_nan[3] = {0.0, NAN, 1.0};
  EXPECT(mtlk::masked_softmax_row(with_nan, nullptr, 3, p) == mtlk::kGateRowNonFinite);
  EXPECT(p[0] == 0.0 && p[2] == 0.0);
  const bool hide_nan[3] = {true, false, true};
  EXPECT(mtlk::masked_softmax_row(with_nan, hide_nan, 3, p) == mtlk::kGateRowOk);
  const double with_inf[2] = {INFINITY, 0.0};
  EXPECT(mtlk::masked_softmax_row(with_inf, nullptr, 2, p) == mtlk::kGateRowNonFinite);
  const bool none[2] = {false, false};
  EXPECT(mtlk::masked_softmax_row(with_inf, none, 2, p) == mtlk::kGateRowEmpty);
  const double all_neg_inf[2] = {-INFINITY, -INFINITY};
  EXPECT(mtlk::masked_softmax_row(all_neg_inf, nullptr, 2, p) == mtlk::kGateRowEmpty);

  // softmax backward against central differences of L(l) = <h, softmax(l)>
  const double l[3] = {0.3, -1.2, 2.0};
  const double h[3] = {0.7, -0.4, 1.1};
  double q[3], grad[3];
  mtlk::masked_softmax_row(l, nullptr, 3, q);
  mtlk::softmax_backward_row(q, h, static_cast<const double*>(nullptr), 3, grad);
  for (int i = 0; i < 3; ++i) {
    double lp[3] = {l[0], l[1], l[2]}, lm[3] = {l[0], l[1], l[2]}, qp[3], qm[3];
    lp[i] += 1e-6;
    lm[i] -= 1e-6;
    mtlk::masked_softmax_row(lp, nullptr, 3, qp);
    mtlk::masked_softmax_row(lm, nullptr, 3, qm);
    double fd = 0;
    for (int j = 0; j < 3; ++j) fd += h[j] * (qp[j] - qm[j]) / 2e-6;
    EXPECT(std::abs(fd - grad[i]) < 1e-8);
  }
}

using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&, bool);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                      const at::Tensor&, const at::Tensor&,
                                                      const std::optional<at::Tensor>&);

void test_cpu_kernels() {
  auto forward = c10::Dispatcher::singleton().findSchemaOrThrow("mtlk::gate_mix", "").typed<ForwardFn>();
  auto backward =
      c10::Dispatcher::singleton().findSchemaOrThrow("mtlk::gate_mix_backward", "").typed<BackwardFn>();
  at::manual_seed(0);
  const std::vector<std::vector<int64_t>> shapes = {{1, 1, 1, 1}, {7, 5, 3, 33}, {129, 12, 6, 40}, {33, 64, 16, 17}};
  for (const auto& s : shapes) {
    const int64_t B = s[0], X = s[1], T = s[2], D = s[3];
    for (bool masked : {false, true}) {
      const at::Tensor E = at::randn({B, X, D}, at::kDouble);
      const at::Tensor L = at::randn({B, T, X}, at::kDouble);
      std::optional<at::Tensor> mask;
      at::Tensor Lm = L;
      if (masked) {
        at::Tensor m = at::rand({T, X}) < 0.5;
        m.select(1, 0).fill_(true);
        mask = m;
        Lm = L.masked_fill(m.logical_not(), -INFINITY);
      }
      const at::Tensor P = at::softmax(Lm, -1);
      const at::Tensor ref = at::bmm(P, E);
      auto [out, probs] = forward.call(E, L, mask, true);
      EXPECT(close(out, ref, 1e-12));
      EXPECT(close(probs, P, 1e-12));
      auto [out32, probs32] = forward.call(E.to(at::kFloat), L.to(at::kFloat), mask, false);
      EXPECT(close(out32, ref, 1e-5));
      EXPECT(probs32.size(0) == 0);

      const at::Tensor G = at::randn({B, T, D}, at::kDouble);
      const at::Tensor dE_ref = at::bmm(P.transpose(1, 2), G);
      const at::Tensor dP = at::bmm(G, E.transpose(1, 2));
      const at::Tensor dL_ref = P * (dP - (P * dP).sum(-1, true));
      auto [dE, dL] = backward.call(G, std::nullopt, E, L, mask);
      EXPECT(close(dE, dE_ref, 1e-12));
      EXPECT(close(dL, dL_ref, 1e-12));
    }
  }
  // bad logits raise c10::ValueError naming the row
  at::Tensor L = at::zeros({2, 2, 3});
  L[1][0][2] = NAN;
  bool raised = false;
  try {
    forward.call(at::zeros({2, 3, 4}), L, std::nullopt, false);
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what()).find("logits[1, 0]") != std::string::npos;
  }
  EXPECT(raised);
}

}  // namespace

int main() {
  test_row_math();
  test_cpu_kernels();
  return mtlk_test::finish("test_gate_mix");
}
