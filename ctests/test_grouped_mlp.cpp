// C++ tests of the grouped MLP reached through the dispatcher (CPU kernels and the autograd
// kernel), against the same stack written with ATen matmul and autograd: small and large
// groups (serial and parallel epilogues), shared and per-group input, and tower-sized
// per-group stacks (the small-stack path, full row tiles and a remainder).
// Run by ctest; exits non-zero if any check fails.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cstdio>
#include <vector>

#include "grouped_mlp.h"
#include "expect.h"

namespace {

bool close(const at::Tensor& a, const at::Tensor& b) { return at::allclose(a, b, 1e-9, 1e-9); }

// The stack with ATen ops: [B, G, out] output.
at::Tensor reference(const at::Tensor& x, const std::vector<at::Tensor>& w, const std::vector<at::Tensor>& b,
                     const std::vector<bool>& relu, bool shared) {
  at::Tensor h = x;
  for (size_t l = 0; l < w.size(); ++l) {
    if (l == 0 && shared) {
      h = at::matmul(h, w[0].reshape({w[0].size(0), -1})).view({x.size(0), w[0].size(1), w[0].size(2)});
    } else {
      h = at::matmul(h.transpose(0, 1), w[l]).transpose(0, 1);  // [G, B, in] @ [G, in, out]
    }
    h = h + b[l];
    if (relu[l]) h = at::relu(h);
  }
  return h;
}

void test_against_aten(int64_t B, int64_t G, std::vector<int64_t> widths, bool shared) {
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = (shared ? at::randn({B, widths[0]}, opt) : at::randn({B, G, widths[0]}, opt)).requires_grad_();
  std::vector<at::Tensor> w, b;
  for (size_t l = 0; l + 1 < widths.size(); ++l) {
    w.push_back((l == 0 && shared ? at::randn({widths[0], G, widths[1]}, opt)
                                  : at::randn({G, widths[l], widths[l + 1]}, opt)).requires_grad_());
    b.push_back(at::randn({G, widths[l + 1]}, opt).requires_grad_());
  }
  const std::vector<bool> relu_v(w.size(), true);
  c10::List<bool> relu;
  for (bool r : relu_v) relu.push_back(r);

  std::vector<at::Tensor> wd, bd;
  for (const auto& t : w) wd.push_back(t.detach());
  for (const auto& t : b) bd.push_back(t.detach());
  const std::vector<at::Tensor> acts = mtlk::grouped_mlp(x.detach(), wd, bd, relu, shared);
  const at::Tensor expected = reference(x, w, b, relu_v, shared);
  EXPECT(close(acts.back(), expected.detach()));

  // through the dispatcher and the C++ autograd kernel
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtlk::grouped_mlp", "")
                       .typed<std::vector<at::Tensor>(const at::Tensor&, at::TensorList, at::TensorList,
                                                      const c10::List<bool>&, bool, const mtlk::GateList&)>();
  const at::Tensor out = op.call(x, w, b, relu, shared, std::nullopt).back();
  const at::Tensor grad = at::randn_like(out);
  std::vector<at::Tensor> inputs{x};
  inputs.insert(inputs.end(), w.begin(), w.end());
  inputs.insert(inputs.end(), b.begin(), b.end());
  const auto got = torch::autograd::grad({out}, inputs, {grad});
  const auto want = torch::autograd::grad({expected}, inputs, {grad});
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT(close(got[i], want[i]));
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (bool shared : {true, false}) {
    test_against_aten(9, 3, {5, 7, 4}, shared);
    test_against_aten(300, 2, {130, 129, 128, 3}, shared);
  }
  test_against_aten(300, 6, {32, 16, 1}, false);
  return mtlk_test::finish("test_grouped_mlp");
}
