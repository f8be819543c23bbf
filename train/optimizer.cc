#include "train/optimizer.h"

#include <cmath>

namespace msa {

AdamW::AdamW(ParameterSet& params, const OptimizerConfig& config)
    : params_(params), config_(config) {
  for (Parameter& p : params_.all()) {
    Slot s;
    s.param = &p;
    s.master = p.value.dtype() == DType::kF32 ? p.value : p.value.to(DType::kF32);
    s.m = Tensor::zeros(p.value.shape(), DType::kF32, p.value.device());
    s.v = Tensor::zeros(p.value.shape(), DType::kF32, p.value.device());
    slots_.push_back(s);
  }
}

double AdamW::grad_norm(const Filter& filter) const {
  double sum = 0;
  for (const Slot& s : slots_)
    if (!filter || filter(s.param->spec)) sum += sum_of_squares(s.param->grad);
  return std::sqrt(sum);
}

void AdamW::step(int64_t step, double lr, double grad_norm, const Filter& filter) {
  double clip_scale = 1.0;
  if (config_.grad_clip > 0 && grad_norm > config_.grad_clip)
    clip_scale = config_.grad_clip / (grad_norm + 1e-6);
  for (Slot& s : slots_) {
    if (filter && !filter(s.param->spec)) continue;
    AdamWHyper h;
    h.lr = lr;
    h.beta1 = config_.beta1;
    h.beta2 = config_.beta2;
    h.eps = config_.eps;
    h.weight_decay = s.param->spec.weight_decay ? config_.weight_decay : 0.0;
    h.grad_scale = clip_scale;
    h.step = step;
    Tensor grad = s.param->grad.dtype() == DType::kF32 ? s.param->grad
                                                        : s.param->grad.to(DType::kF32);
    adamw_update(s.master, grad, s.m, s.v, h);
    if (s.master.raw_data() != s.param->value.raw_data())
      s.param->value.copy_from(s.master.to(s.param->value.dtype()));
  }
}

namespace {
std::map<std::string, Tensor> collect(const std::vector<Parameter*>& params,
                                      const std::vector<Tensor>& tensors) {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < params.size(); ++i)
    out[params[i]->spec.name] = tensors[i].to(Device::kCPU).to(DType::kF32).clone();
  return out;
}
}  // namespace

std::map<std::string, Tensor> AdamW::master_weights() const {
  std::vector<Parameter*> ps;
  std::vector<Tensor> ts;
  for (const Slot& s : slots_) { ps.push_back(s.param); ts.push_back(s.master); }
  return collect(ps, ts);
}

std::map<std::string, Tensor> AdamW::first_moments() const {
  std::vector<Parameter*> ps;
  std::vector<Tensor> ts;
  for (const Slot& s : slots_) { ps.push_back(s.param); ts.push_back(s.m); }
  return collect(ps, ts);
}

std::map<std::string, Tensor> AdamW::second_moments() const {
  std::vector<Parameter*> ps;
  std::vector<Tensor> ts;
  for (const Slot& s : slots_) { ps.push_back(s.param); ts.push_back(s.v); }
  return collect(ps, ts);
}

void AdamW::load_state(const std::map<std::string, Tensor>& masters,
                       const std::map<std::string, Tensor>& m,
                       const std::map<std::string, Tensor>& v) {
  for (Slot& s : slots_) {
    const std::string& name = s.param->spec.name;
    auto put = [&](const std::map<std::string, Tensor>& from, Tensor& dst) {
      auto it = from.find(name);
      MSA_CHECK(it != from.end(), "optimizer state lacks %s", name);
      dst.copy_from(it->second.to(DType::kF32).to(dst.device()));
    };
    put(masters, s.master);
    if (!m.empty()) put(m, s.m);
    if (!v.empty()) put(v, s.v);
    if (s.master.raw_data() != s.param->value.raw_data())
      s.param->value.copy_from(s.master.to(s.param->value.dtype()));
  }
}

void AdamW::sync_masters_from_params() {
  for (Slot& s : slots_)
    if (s.master.raw_data() != s.param->value.raw_data())
      s.master.copy_from(s.param->value.to(DType::kF32));
}

}  // namespace msa
