#include "model/mlp_block.h"

#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/swiglu.h"

namespace msa {
namespace {
Parameter& param(ParameterSet& params, int layer, const char* suffix) {
  return params.at(layer_param_name(layer, suffix));
}
}  // namespace

void mlp_block_forward(const ModelConfig& c, int layer, ParameterSet& params, const Tensor& x,
                       MlpActivations& act, Tensor& y, const NormedInput* normed) {
  const int64_t N = x.size(0), D = c.d_model, F = c.ffn_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  check_shape(x, {N, D}, "mlp_block_forward: x");
  NormedInput in = normalize_block_input(x, param(params, layer, "mlp_norm.weight").value,
                                         c.norm_eps, normed, "mlp_block_forward");
  act.xn = std::move(in.xn);
  act.rstd = std::move(in.rstd);
  act.gate = Tensor::empty({N, F}, dt, dev);
  act.up = Tensor::empty({N, F}, dt, dev);
  act.h = Tensor::empty({N, F}, dt, dev);
  linear_forward(act.xn, param(params, layer, "mlp.w_gate.weight").value, Tensor(), act.gate);
  linear_forward(act.xn, param(params, layer, "mlp.w_up.weight").value, Tensor(), act.up);
  swiglu_forward(act.gate, act.up, act.h);
  linear_forward(act.h, param(params, layer, "mlp.w_down.weight").value, Tensor(), y);
}

void mlp_block_backward(const ModelConfig& c, int layer, ParameterSet& params, const Tensor& x,
                        const Tensor& dy, MlpActivations& act, Tensor& dx,
                        const Tensor& skip_grad) {
  const int64_t N = x.size(0), D = c.d_model, F = c.ffn_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  Tensor none;
  Parameter& w_down = param(params, layer, "mlp.w_down.weight");
  Parameter& w_gate = param(params, layer, "mlp.w_gate.weight");
  Parameter& w_up = param(params, layer, "mlp.w_up.weight");
  Tensor dh = Tensor::empty({N, F}, dt, dev);
  linear_backward(dy, act.h, w_down.value, dh, w_down.grad, none);
  Tensor dgate = Tensor::empty({N, F}, dt, dev), dup = Tensor::empty({N, F}, dt, dev);
  swiglu_backward(dh, act.gate, act.up, dgate, dup);
  Tensor dxn = Tensor::empty({N, D}, dt, dev);
  linear_backward(dgate, act.xn, w_gate.value, dxn, w_gate.grad, none);
  linear_backward(dup, act.xn, w_up.value, dxn, w_up.grad, none, DxWrite::kAccumulate);
  dx = Tensor::empty({N, D}, dt, dev);
  Parameter& norm = param(params, layer, "mlp_norm.weight");
  rmsnorm_backward(dxn, x, norm.value, act.rstd, dx, norm.grad, skip_grad);
}

}  // namespace msa
