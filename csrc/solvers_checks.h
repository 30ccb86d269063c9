// Argument checks (shapes, dtypes, devices) of the T x T solver ops, shared by the CPU and
// CUDA launchers so a direct C++ caller gets the same messages as the Python front end.
// Values (NaN in gram, order rows that are not permutations, bounds, targets) are checked
// by the kernels while they solve, see csrc/include/mtlk/solvers.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace mtlk {

// gram [N, T, T] float64; returns T.
inline int64_t check_gram(const at::Tensor& gram, const char* op) {
  TORCH_CHECK_VALUE(gram.dim() == 3 && gram.size(1) == gram.size(2), op,
                    ": gram must be [N, T, T] (square per problem), got ", gram.sizes());
  TORCH_CHECK_TYPE(gram.scalar_type() == at::kDouble, op, ": gram must be float64, got ",
                   gram.scalar_type());
  return gram.size(1);
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& gram,
                              const char* op) {
  TORCH_CHECK(t.device() == gram.device(), op, ": ", name, " on ", t.device(), " but gram on ",
              gram.device());
}

inline void check_order(const at::Tensor& order, const at::Tensor& gram, const char* op) {
  TORCH_CHECK_VALUE(order.sizes() == gram.sizes(), op, ": order must be [N, T, T] = ", gram.sizes(),
                    " like gram, got ", order.sizes());
  TORCH_CHECK_TYPE(order.scalar_type() == at::kLong, op, ": order must be int64, got ",
                   order.scalar_type());
  check_same_device(order, "order", gram, op);
}

inline void check_pcgrad_args(const at::Tensor& gram, const at::Tensor& order) {
  check_gram(gram, "pcgrad_weights");
  check_order(order, gram, "pcgrad_weights");
}

inline void check_gradvac_args(const at::Tensor& gram, const at::Tensor& order, const at::Tensor& target,
                               double beta) {
  check_gram(gram, "gradvac_weights");
  check_order(order, gram, "gradvac_weights");
  TORCH_CHECK_VALUE(target.sizes() == gram.sizes(), "gradvac_weights: target must be [N, T, T] = ",
                    gram.sizes(), " like gram, got ", target.sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kDouble, "gradvac_weights: target must be float64, got ",
                   target.scalar_type());
  check_same_device(target, "target", gram, "gradvac_weights");
  TORCH_CHECK_VALUE(beta >= 0.0 && beta <= 1.0, "gradvac_weights: beta (EMA rate) must be in [0, 1], got ",
                    beta);
}

inline void check_mgda_args(const at::Tensor& gram, int64_t max_iter, double tol) {
  check_gram(gram, "mgda_weights");
  TORCH_CHECK_VALUE(max_iter >= 0, "mgda_weights: max_iter must be >= 0, got ", max_iter);
  TORCH_CHECK_VALUE(tol >= 0.0 && std::isfinite(tol), "mgda_weights: tol must be finite and >= 0, got ",
                    tol);
}

inline void check_peltr_args(const at::Tensor& gram, const at::Tensor& lower_bounds) {
  check_gram(gram, "peltr_weights");
  TORCH_CHECK_VALUE(lower_bounds.dim() == 2 && lower_bounds.size(0) == gram.size(0) &&
                        lower_bounds.size(1) == gram.size(1),
                    "peltr_weights: lower_bounds must be [N, T] = [", gram.size(0), ", ", gram.size(1),
                    "], got ", lower_bounds.sizes());
  TORCH_CHECK_TYPE(lower_bounds.scalar_type() == at::kDouble,
                   "peltr_weights: lower_bounds must be float64, got ", lower_bounds.scalar_type());
  check_same_device(lower_bounds, "lower_bounds", gram, "peltr_weights");
}

inline void check_dual_cone_args(const at::Tensor& gram, const at::Tensor& bounds) {
  check_gram(gram, "dual_cone_weights");
  TORCH_CHECK_VALUE(bounds.dim() == 3 && bounds.size(0) == gram.size(0) && bounds.size(2) == gram.size(1),
                    "dual_cone_weights: bounds must be [N, K, T] = [", gram.size(0), ", K, ", gram.size(1),
                    "], got ", bounds.sizes());
  TORCH_CHECK_TYPE(bounds.scalar_type() == at::kDouble, "dual_cone_weights: bounds must be float64, got ",
                   bounds.scalar_type());
  check_same_device(bounds, "bounds", gram, "dual_cone_weights");
}

inline void check_cagrad_args(const at::Tensor& gram, double c) {
  check_gram(gram, "cagrad_weights");
  TORCH_CHECK_VALUE(c >= 0.0 && std::isfinite(c), "cagrad_weights: c must be finite and >= 0, got ", c);
}

}  // namespace mtlk
