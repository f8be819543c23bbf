// The parameter registry: every trainable tensor of the model, by name, with its shape, its
// initialization, whether weight decay applies, and how tensor parallelism splits it.
//
// Names (also the HDF5 checkpoint dataset names, see docs/checkpoint.md):
//   embed.weight [V, D]                         lm_head.weight [V, D] (absent when tied)
//   final_norm.weight [D]
//   layers.<l>.attn_norm.weight [D]             layers.<l>.mlp_norm.weight [D]
//   layers.<l>.attn.wq.weight [H*d, D]          (.bias [H*d] with qkv_bias)
//   layers.<l>.attn.wk.weight [G*d, D]          (.bias [G*d] with qkv_bias)
//   layers.<l>.attn.wv.weight [G*d, D]          (.bias [G*d] with qkv_bias)
//   layers.<l>.attn.wo.weight [D, H*d]
//   layers.<l>.attn.q_norm.weight [d], layers.<l>.attn.k_norm.weight [d]   (qk_norm only)
//   layers.<l>.attn.index_wq.weight [G*d_I, D]  one index query head per KV group    (MSA only)
//   layers.<l>.attn.index_wk.weight [d_I, D]    one index key head shared by the groups (MSA)
//   layers.<l>.mlp.w_gate.weight [F, D], layers.<l>.mlp.w_up.weight [F, D],
//   layers.<l>.mlp.w_down.weight [D, F]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/fnv1a.h"  // fnv1a64, for the parameters' seeds (and their users)
#include "core/tensor.h"
#include "model/model_config.h"

namespace msa {

enum class ParamInit { kNormal, kOnes, kZeros };

// How tensor parallelism splits a parameter (Megatron style).
enum class TpSplit {
  kReplicated,  // every rank holds all of it (norms, row-parallel biases, the index key W_IK)
  kRows,        // split along dim 0 (column-parallel weights and their biases, vocab rows)
  kCols,        // split along dim 1 (row-parallel weights)
};

struct ParamSpec {
  std::string name;
  Shape shape;
  ParamInit init = ParamInit::kNormal;
  double init_std = 0.02;
  bool weight_decay = true;   // false for norms and biases
  bool index_branch = false;  // W_IQ / W_IK: trained only by the index distillation loss
  TpSplit tp_split = TpSplit::kReplicated;
};

// All parameters of `config`, in a fixed order (embedding, layers in order, final norm, head).
std::vector<ParamSpec> model_param_specs(const ModelConfig& config);

struct Parameter {
  ParamSpec spec;
  Tensor value;  // the weights the model computes with
  Tensor grad;   // same shape; accumulates in backward
};

class ParameterSet {
 public:
  // Allocates value and grad for every spec, on `device` with `dtype` (grads: dtype on the CPU,
  // f32 on CUDA), zero-filled.
  static ParameterSet allocate(const std::vector<ParamSpec>& specs, DType dtype, Device device);

  // Initializes every parameter from the counter-based RNG: parameter `name` draws from stream
  // rng_substream(seed, fnv1a(name)), so adding or removing a parameter does not change others.
  // With tensor parallelism (tp_size > 1) every rank draws the full tensor and keeps its part, so
  // the model is the same at any tp.
  void initialize(uint64_t seed, int tp_rank = 0, int tp_size = 1);

  Parameter& at(const std::string& name);
  const Parameter& at(const std::string& name) const;
  Parameter* find(const std::string& name);
  std::vector<Parameter>& all() { return params_; }
  const std::vector<Parameter>& all() const { return params_; }
  int64_t numel() const;
  void zero_grads();

 private:
  std::vector<Parameter> params_;
  absl::flat_hash_map<std::string, size_t> index_;
};

// "layers.<layer>.<suffix>": the name of a layer's parameter (the table at the top).
std::string layer_param_name(int layer, const std::string& suffix);

}  // namespace msa
