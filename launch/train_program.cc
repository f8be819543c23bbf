#include "launch/train_program.h"

#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "model/transformer.h"
#include "train/batch_source.h"

namespace msa {
namespace {

absl::StatusOr<Device> choose_device(const std::string& flag) {
  if (flag == "cpu") return Device::kCPU;
  if (flag == "cuda") {
    if (!cuda_available())
      return absl::InvalidArgumentError(
          "invalid --device: cuda requested but no CUDA device is available in this build/machine");
    return Device::kCUDA;
  }
  if (flag == "auto") return cuda_available() ? Device::kCUDA : Device::kCPU;
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid --device: '%s' (use cpu, cuda or auto)", flag));
}

absl::Status validate_run(const TrainProgramOptions& o) {
  auto bad = [](const char* flag, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("invalid --%s: %s", flag, why));
  };
  if (o.batch_size < 1) return bad("batch_size", absl::StrFormat("%d is < 1", o.batch_size));
  if (o.seq_len < 2) return bad("seq_len", absl::StrFormat("%d is < 2", o.seq_len));
  if (o.trainer.steps < 0) return bad("steps", absl::StrFormat("%d is < 0", o.trainer.steps));
  if (o.trainer.grad_accum < 1)
    return bad("grad_accum", absl::StrFormat("%d is < 1", o.trainer.grad_accum));
  if (!(o.trainer.lr.max_lr > 0)) return bad("lr", absl::StrFormat("%g must be > 0", o.trainer.lr.max_lr));
  if (o.trainer.log_every < 1) return bad("log_every", absl::StrFormat("%d is < 1", o.trainer.log_every));
  if (o.trainer.index_warmup_steps > 0 && !o.model.any_msa())
    return bad("index_warmup_steps", "needs at least one MSA layer (--attention)");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BatchSource>> make_source(const TrainProgramOptions& o) {
  if (o.data == "synthetic:repeat")
    return make_repeating_source(o.model.vocab_size, o.batch_size, o.seq_len, 61, o.seed);
  return absl::InvalidArgumentError(absl::StrFormat("invalid --data: unknown source '%s'", o.data));
}

}  // namespace

absl::Status run_train_program(TrainProgramOptions o) {
  MSA_ASSIGN_OR_RETURN(o.model.attention, parse_attention_kinds(o.attention_spec, o.model.n_layers));
  MSA_RETURN_IF_ERROR(o.model.validate());
  MSA_RETURN_IF_ERROR(validate_run(o));
  MSA_ASSIGN_OR_RETURN(Device device, choose_device(o.device));
  MSA_ASSIGN_OR_RETURN(std::unique_ptr<BatchSource> data, make_source(o));

  const DType dtype = device == Device::kCUDA ? DType::kBF16 : DType::kF32;
  Transformer model(o.model, dtype, device);
  model.params().initialize(o.seed);
  AdamW optimizer(model.params(), o.optimizer);
  std::printf("msa-train: %d layers (%s), d_model %d, %d heads / %d kv heads, %.2fM parameters, "
              "%s %s\n",
              o.model.n_layers, o.attention_spec.c_str(), static_cast<int>(o.model.d_model),
              o.model.n_heads, o.model.n_kv_heads, model.params().numel() / 1e6,
              device_name(device), dtype_name(dtype));
  std::printf("msa-train: data %s, batch %d x %d tokens, %d steps\n", data->describe().c_str(),
              static_cast<int>(o.batch_size), static_cast<int>(o.seq_len),
              static_cast<int>(o.trainer.steps));
  Trainer trainer(model, optimizer, *data, o.trainer);
  return trainer.run(1);
}

}  // namespace msa
