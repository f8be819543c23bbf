// AdamW over a ParameterSet with fp32 master weights and moments, decoupled weight decay applied
// only to matrices (never to norms or biases), and global-norm gradient clipping.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/communicator.h"
#include "kernels/adamw.h"
#include "model/parameters.h"

namespace msa {

struct OptimizerConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // max global gradient norm; <= 0 disables clipping
  // Data parallelism (nullptr: one replica). Gradients are summed over the group in buckets of
  // bucket_bytes; with zero1 the group shards the fp32 masters and moments instead (ZeRO stage
  // 1): gradients are reduce-scattered, each rank updates its shard, parameters are all-gathered
  // (in the compute dtype: bf16 on the GPU). CPU parameters go through MPI, CUDA ones NCCL.
  Communicator* dp = nullptr;
  bool zero1 = false;
  int64_t bucket_bytes = 25 << 20;
  // Tensor parallelism: the group over which split parameters' pieces make up the whole (the
  // gradient norm sums their squares over it; replicated parameters count once).
  Communicator* tp = nullptr;
};

class AdamW {
 public:
  // Master weights: the parameters themselves when they are f32; otherwise f32 copies (bf16
  // compute weights on the GPU are refreshed from the masters after each step).
  AdamW(ParameterSet& params, const OptimizerConfig& config);

  // Which parameters train (e.g. only the index branch during warm-up). Default: all.
  using Filter = std::function<bool(const ParamSpec&)>;

  // Data-parallel gradient reduction overlapped with the backward: begin_reduction() before the
  // backward that completes the step's gradients; grads_ready() (the model's GradsReadyFn) with
  // each parameter once as its gradient is final: every bucket whose parameters are all ready
  // starts its all-reduce at once. Without these calls reduce_gradients() does all the work.
  void begin_reduction();
  void grads_ready(const std::vector<Parameter*>& params);

  // Sums the gradients over the data-parallel group (a no-op without one): starts the buckets
  // not yet started and waits for all. With zero1: reduce-scatters into this rank's shard.
  // Collective.
  void reduce_gradients();

  // Global L2 norm of the (reduced) gradients of the parameters selected by `filter`.
  double grad_norm(const Filter& filter = nullptr) const;

  // One update at 1-based `step` with learning rate `lr`, clipping by the given global norm.
  // Parameters rejected by `filter` are left untouched (their moments too). `bias_step`, when
  // given, is a parameter's own 1-based update count for Adam's bias correction (a parameter
  // frozen for the run's first steps has zero moments when it starts: counting from the run's
  // step would shrink its first updates); else `step`.
  using StepOf = std::function<int64_t(const ParamSpec&)>;
  void step(int64_t step, double lr, double grad_norm, const Filter& filter = nullptr,
            const StepOf& bias_step = nullptr);

  // fp32 CPU copies of the master weights / first / second moments, by parameter name (full
  // tensors; with zero1 they are gathered from the shards: collective).
  std::map<std::string, Tensor> master_weights() const;
  std::map<std::string, Tensor> first_moments() const;
  std::map<std::string, Tensor> second_moments() const;
  // Replaces masters (and the compute weights) and moments; every tensor must match in shape.
  void load_state(const std::map<std::string, Tensor>& masters,
                  const std::map<std::string, Tensor>& m, const std::map<std::string, Tensor>& v);

  const OptimizerConfig& config() const { return config_; }

 private:
  struct Slot {
    Parameter* param;
    Tensor master;  // f32; shares storage with param->value when that is f32; undefined for
                    // other dtypes under ZeRO-1 (the masters live in master_shard_ only)
    Tensor m, v;
  };
  // ZeRO-1: every parameter's elements in one flat index space [0, padded_), split into
  // dp->size() equal shards; this rank owns [shard_begin_, shard_begin_ + shard_size_).
  struct Segment {
    Slot* slot;
    int64_t flat_offset;  // where the parameter starts in the flat space
  };
  // Gradients packed for one all-reduce: consecutive parameters in backward order (the reverse of
  // registration), one dtype and device, at most bucket_bytes (or one larger parameter).
  struct Bucket {
    std::vector<Parameter*> params;
    Tensor buffer;
    int pending = 0;  // parameters not yet ready this step
    std::unique_ptr<CommWork> work;
  };
  void init_buckets();
  void launch_bucket(Bucket& b);
  // bias_step (when given) says `spec`'s own step for the bias correction, else `step`.
  AdamWHyper hyper(const ParamSpec& spec, int64_t step, const StepOf& bias_step, double lr,
                   double clip_scale) const;
  void init_zero1();
  Tensor flat_from_params(bool grads) const;  // [padded_] f32 on the CPU
  std::map<std::string, Tensor> gather_shard(const Tensor& shard) const;

  ParameterSet& params_;
  OptimizerConfig config_;
  std::vector<Slot> slots_;
  std::vector<Segment> segments_;
  std::vector<Bucket> buckets_;
  std::map<const Parameter*, size_t> bucket_of_;
  bool reduction_armed_ = false;
  int64_t padded_ = 0, shard_begin_ = 0, shard_size_ = 0;
  Device device_ = Device::kCPU;       // of the shards (the parameters' device)
  DType gather_dtype_ = DType::kF32;  // of the weights' all-gather after each step
  Tensor master_shard_, m_shard_, v_shard_, grad_shard_;
};

}  // namespace msa
