#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

namespace msa {

AdamW::AdamW(ParameterSet& params, const OptimizerConfig& config)
    : params_(params), config_(config) {
  const bool sharded = config_.zero1 && config_.dp != nullptr;
  for (Parameter& p : params_.all()) {
    Slot s;
    s.param = &p;
    // ZeRO-1 keeps f32 masters only for this rank's shard (master_shard_): a full f32 copy of
    // bf16 weights would cost every rank 4 bytes per parameter, what sharding is meant to save.
    if (p.value.dtype() == DType::kF32)
      s.master = p.value;
    else if (!sharded)
      s.master = p.value.to(DType::kF32);
    if (!sharded) {
      s.m = Tensor::zeros(p.value.shape(), DType::kF32, p.value.device());
      s.v = Tensor::zeros(p.value.shape(), DType::kF32, p.value.device());
    }
    slots_.push_back(s);
  }
  if (sharded)
    init_zero1();
  else if (config_.dp != nullptr && config_.dp->size() > 1)
    init_buckets();
}

void AdamW::init_buckets() {
  const int64_t limit = std::max<int64_t>(1, config_.bucket_bytes);
  for (auto it = params_.all().rbegin(); it != params_.all().rend(); ++it) {
    Parameter& p = *it;
    const int64_t bytes = static_cast<int64_t>(p.grad.nbytes());
    bool fits = !buckets_.empty();
    if (fits) {
      const Bucket& b = buckets_.back();
      const Tensor& g0 = b.params[0]->grad;
      int64_t used = 0;
      for (const Parameter* q : b.params) used += static_cast<int64_t>(q->grad.nbytes());
      fits = g0.dtype() == p.grad.dtype() && g0.device() == p.grad.device() && used + bytes <= limit;
    }
    if (!fits) buckets_.emplace_back();
    buckets_.back().params.push_back(&p);
    bucket_of_[&p] = buckets_.size() - 1;
  }
  for (Bucket& b : buckets_) {
    int64_t n = 0;
    for (const Parameter* p : b.params) n += p->grad.numel();
    b.buffer = Tensor::empty({n}, b.params[0]->grad.dtype(), b.params[0]->grad.device());
  }
}

void AdamW::launch_bucket(Bucket& b) {
  int64_t off = 0;
  for (const Parameter* p : b.params) {
    const int64_t n = p->grad.numel();
    b.buffer.slice0(off, off + n).copy_from(p->grad.view({n}));
    off += n;
  }
  b.work = config_.dp->all_reduce_sum_async(b.buffer);
}

void AdamW::begin_reduction() {
  if (buckets_.empty()) return;
  for (Bucket& b : buckets_) {
    MSA_CHECK(b.work == nullptr, "begin_reduction: the previous step's reduction is unfinished");
    b.pending = static_cast<int>(b.params.size());
  }
  reduction_armed_ = true;
}

void AdamW::grads_ready(const std::vector<Parameter*>& params) {
  if (!reduction_armed_) return;
  for (const Parameter* p : params) {
    auto it = bucket_of_.find(p);
    MSA_CHECK(it != bucket_of_.end(), "grads_ready: %s is not a parameter of this optimizer",
              p->spec.name);
    Bucket& b = buckets_[it->second];
    MSA_CHECK(b.pending > 0, "grads_ready: %s reported twice", p->spec.name);
    if (--b.pending == 0) launch_bucket(b);
  }
}

void AdamW::init_zero1() {
  // The shards live where the parameters do: host memory through MPI, GPU memory through NCCL.
  device_ = params_.all().empty() ? Device::kCPU : params_.all()[0].value.device();
  for (const Parameter& p : params_.all())
    MSA_CHECK(p.value.device() == device_, "ZeRO-1: %s is on another device than %s",
              p.spec.name, params_.all()[0].spec.name);
  int64_t offset = 0;
  for (Slot& s : slots_) {
    segments_.push_back({&s, offset});
    offset += s.param->value.numel();
  }
  const int n = config_.dp->size();
  shard_size_ = (offset + n - 1) / n;
  padded_ = shard_size_ * n;
  shard_begin_ = shard_size_ * config_.dp->rank();
  const Tensor flat = flat_from_params(/*grads=*/false);
  master_shard_ = flat.slice0(shard_begin_, shard_begin_ + shard_size_).clone();
  m_shard_ = Tensor::zeros({shard_size_}, DType::kF32, device_);
  v_shard_ = Tensor::zeros({shard_size_}, DType::kF32, device_);
  grad_shard_ = Tensor::zeros({shard_size_}, DType::kF32, device_);
  // The compute weights are all-gathered in their own dtype (bf16 on the GPU: half the bytes of
  // the f32 masters) when they share one; f32 otherwise.
  gather_dtype_ = params_.all().empty() ? DType::kF32 : params_.all()[0].value.dtype();
  for (const Parameter& p : params_.all())
    if (p.value.dtype() != gather_dtype_) gather_dtype_ = DType::kF32;
}

Tensor AdamW::flat_from_params(bool grads) const {
  Tensor flat = Tensor::zeros({padded_}, DType::kF32, device_);
  for (const Segment& seg : segments_) {
    const Tensor& src = grads ? seg.slot->param->grad : seg.slot->param->value;
    const int64_t n = src.numel();
    flat.slice0(seg.flat_offset, seg.flat_offset + n).copy_from(src.to(DType::kF32).view({n}));
  }
  return flat;
}

void AdamW::reduce_gradients() {
  Communicator* dp = config_.dp;
  if (dp == nullptr || dp->size() == 1) {
    if (!segments_.empty()) grad_shard_.copy_from(flat_from_params(true).slice0(0, shard_size_));
    return;
  }
  if (!segments_.empty()) {
    dp->reduce_scatter_sum(flat_from_params(/*grads=*/true), grad_shard_);
    return;
  }
  // Buckets the backward did not start (all of them without begin_reduction), in order.
  for (Bucket& b : buckets_)
    if (b.work == nullptr && (!reduction_armed_ || b.pending > 0)) launch_bucket(b);
  reduction_armed_ = false;
  for (Bucket& b : buckets_) {
    b.work->wait();
    b.work.reset();
    int64_t off = 0;
    for (Parameter* p : b.params) {
      const int64_t n = p->grad.numel();
      p->grad.copy_from(b.buffer.slice0(off, off + n).view(p->grad.shape()));
      off += n;
    }
  }
}

double AdamW::grad_norm(const Filter& filter) const {
  // Squares of replicated parameters (whole on every tp rank) and of split ones (a piece each).
  double replicated = 0, split = 0;
  if (!segments_.empty()) {
    std::vector<Tensor> pieces;
    std::vector<bool> piece_replicated;
    for (const Segment& seg : segments_) {
      if (filter && !filter(seg.slot->param->spec)) continue;
      const int64_t n = seg.slot->param->value.numel();
      const int64_t b = std::max(seg.flat_offset, shard_begin_);
      const int64_t e = std::min(seg.flat_offset + n, shard_begin_ + shard_size_);
      if (b >= e) continue;
      pieces.push_back(grad_shard_.slice0(b - shard_begin_, e - shard_begin_));
      piece_replicated.push_back(seg.slot->param->spec.tp_split == TpSplit::kReplicated);
    }
    const std::vector<double> sq = sums_of_squares(pieces);  // one device sync for all
    for (size_t i = 0; i < sq.size(); ++i) (piece_replicated[i] ? replicated : split) += sq[i];
    replicated = config_.dp->all_reduce_sum(replicated);
    split = config_.dp->all_reduce_sum(split);
  } else {
    std::vector<Tensor> grads;
    std::vector<const Slot*> counted;
    for (const Slot& s : slots_) {
      if (filter && !filter(s.param->spec)) continue;
      grads.push_back(s.param->grad);
      counted.push_back(&s);
    }
    const std::vector<double> sq = sums_of_squares(grads);  // one device sync for all
    for (size_t i = 0; i < sq.size(); ++i)
      (counted[i]->param->spec.tp_split == TpSplit::kReplicated ? replicated : split) += sq[i];
  }
  if (config_.tp != nullptr) split = config_.tp->all_reduce_sum(split);
  return std::sqrt(replicated + split);
}

AdamWHyper AdamW::hyper(const ParamSpec& spec, int64_t step, const StepOf& bias_step, double lr,
                        double clip_scale) const {
  AdamWHyper h;
  h.lr = lr;
  h.beta1 = config_.beta1;
  h.beta2 = config_.beta2;
  h.eps = config_.eps;
  h.weight_decay = spec.weight_decay ? config_.weight_decay : 0.0;
  h.grad_scale = clip_scale;
  h.step = bias_step ? bias_step(spec) : step;
  return h;
}

void AdamW::step(int64_t step, double lr, double grad_norm, const Filter& filter,
                 const StepOf& bias_step) {
  double clip_scale = 1.0;
  if (config_.grad_clip > 0 && grad_norm > config_.grad_clip)
    clip_scale = config_.grad_clip / (grad_norm + 1e-6);
  if (!segments_.empty()) {
    for (const Segment& seg : segments_) {
      Slot& s = *seg.slot;
      if (filter && !filter(s.param->spec)) continue;
      const int64_t n = s.param->value.numel();
      const int64_t b = std::max(seg.flat_offset, shard_begin_);
      const int64_t e = std::min(seg.flat_offset + n, shard_begin_ + shard_size_);
      if (b >= e) continue;
      const AdamWHyper h = hyper(s.param->spec, step, bias_step, lr, clip_scale);
      const int64_t lo = b - shard_begin_, hi = e - shard_begin_;
      Tensor master = master_shard_.slice0(lo, hi), m = m_shard_.slice0(lo, hi),
             v = v_shard_.slice0(lo, hi);
      adamw_update(master, grad_shard_.slice0(lo, hi), m, v, h);
    }
    // Every rank's updated shard, in the compute weights' dtype, into every rank's weights (f32
    // parameters are their own masters).
    const Tensor shard =
        gather_dtype_ == DType::kF32 ? master_shard_ : master_shard_.to(gather_dtype_);
    Tensor flat = Tensor::empty({padded_}, gather_dtype_, device_);
    config_.dp->all_gather(shard, flat);
    for (const Segment& seg : segments_) {
      Parameter& p = *seg.slot->param;
      const int64_t n = p.value.numel();
      const Tensor piece = flat.slice0(seg.flat_offset, seg.flat_offset + n).view(p.value.shape());
      p.value.copy_from(piece.dtype() == p.value.dtype() ? piece : piece.to(p.value.dtype()));
    }
    return;
  }
  for (Slot& s : slots_) {
    if (filter && !filter(s.param->spec)) continue;
    const AdamWHyper h = hyper(s.param->spec, step, bias_step, lr, clip_scale);
    Tensor grad =
        s.param->grad.dtype() == DType::kF32 ? s.param->grad : s.param->grad.to(DType::kF32);
    if (s.master.raw_data() != s.param->value.raw_data())
      adamw_update(s.master, grad, s.m, s.v, h, s.param->value);  // + the compute copy
    else
      adamw_update(s.master, grad, s.m, s.v, h);
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
  if (!segments_.empty()) return gather_shard(master_shard_);
  std::vector<Parameter*> ps;
  std::vector<Tensor> ts;
  for (const Slot& s : slots_) {
    ps.push_back(s.param);
    ts.push_back(s.master);
  }
  return collect(ps, ts);
}

std::map<std::string, Tensor> AdamW::gather_shard(const Tensor& shard) const {
  Tensor flat = Tensor::empty({padded_}, DType::kF32, device_);
  if (config_.dp != nullptr)
    config_.dp->all_gather(shard, flat);
  else
    flat.copy_from(shard);
  std::map<std::string, Tensor> out;
  for (const Segment& seg : segments_) {
    const Parameter& p = *seg.slot->param;
    out[p.spec.name] = flat.slice0(seg.flat_offset, seg.flat_offset + p.value.numel())
                           .view(p.value.shape())
                           .to(Device::kCPU)
                           .clone();
  }
  return out;
}

std::map<std::string, Tensor> AdamW::first_moments() const {
  if (!segments_.empty()) return gather_shard(m_shard_);
  std::vector<Parameter*> ps;
  std::vector<Tensor> ts;
  for (const Slot& s : slots_) {
    ps.push_back(s.param);
    ts.push_back(s.m);
  }
  return collect(ps, ts);
}

std::map<std::string, Tensor> AdamW::second_moments() const {
  if (!segments_.empty()) return gather_shard(v_shard_);
  std::vector<Parameter*> ps;
  std::vector<Tensor> ts;
  for (const Slot& s : slots_) {
    ps.push_back(s.param);
    ts.push_back(s.v);
  }
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
    if (s.master.defined()) {
      put(masters, s.master);
      if (s.master.raw_data() != s.param->value.raw_data())
        s.param->value.copy_from(s.master.to(s.param->value.dtype()));
    } else {  // ZeRO-1 without full masters: the compute weights from the given masters
      auto it = masters.find(name);
      MSA_CHECK(it != masters.end(), "optimizer state lacks %s", name);
      s.param->value.copy_from(
          it->second.to(DType::kF32).to(s.param->value.dtype()).to(s.param->value.device()));
    }
    if (segments_.empty()) {
      if (!m.empty()) put(m, s.m);
      if (!v.empty()) put(v, s.v);
    }
  }
  if (!segments_.empty()) {
    // This rank's shard of the full masters and moments.
    auto shard_of = [&](const std::map<std::string, Tensor>& full, Tensor& shard) {
      Tensor flat = Tensor::zeros({padded_}, DType::kF32);
      for (const Segment& seg : segments_) {
        const Parameter& p = *seg.slot->param;
        flat.slice0(seg.flat_offset, seg.flat_offset + p.value.numel())
            .copy_from(full.at(p.spec.name).to(DType::kF32).view({p.value.numel()}));
      }
      shard.copy_from(flat.slice0(shard_begin_, shard_begin_ + shard_size_).to(device_));
    };
    shard_of(masters, master_shard_);
    if (!m.empty()) shard_of(m, m_shard_);
    if (!v.empty()) shard_of(v, v_shard_);
  }
}

}  // namespace msa
