#include "model/normed_input.h"

#include <string>

#include "kernels/norm.h"

namespace msa {
namespace {

NormedInput empty_like_input(const Tensor& x) {
  NormedInput n;
  n.xn = Tensor::empty(x.shape(), x.dtype(), x.device());
  n.rstd = Tensor::empty({x.size(0)}, x.is_cuda() ? DType::kF32 : x.dtype(), x.device());
  return n;
}

}  // namespace

NormedInput add_and_normalize(const Tensor& a, const Tensor& b, const Tensor& weight, double eps,
                              Tensor& sum) {
  NormedInput n = empty_like_input(sum);
  add_rmsnorm_forward(a, b, weight, eps, sum, n.xn, n.rstd);
  return n;
}

NormedInput normalize_block_input(const Tensor& x, const Tensor& weight, double eps,
                                  const NormedInput* normed, const char* op) {
  MSA_CHECK(x.ndim() == 2, "%s: input %s must be 2-D", op, x.describe());
  if (normed != nullptr) {
    check_shape(normed->xn, x.shape(), (std::string(op) + ": normed xn").c_str());
    check_shape(normed->rstd, {x.size(0)}, (std::string(op) + ": normed rstd").c_str());
    return *normed;
  }
  NormedInput n = empty_like_input(x);
  rmsnorm_forward(x, weight, eps, n.xn, n.rstd);
  return n;
}

}  // namespace msa
