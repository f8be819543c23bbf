// The body of msa-train, separated from flag parsing so tests can run it in-process.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "model/model_config.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace msa {

struct TrainProgramOptions {
  ModelConfig model;
  std::string attention_spec = "msa";
  std::string device = "auto";
  std::string data = "synthetic:repeat";
  int64_t batch_size = 4;
  int64_t seq_len = 256;
  uint64_t seed = 1234;
  TrainerConfig trainer;
  OptimizerConfig optimizer;
};

// Validates the options (errors name the flag), builds the model, data and optimizer, trains.
absl::Status run_train_program(TrainProgramOptions options);

}  // namespace msa
