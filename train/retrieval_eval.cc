#include "train/retrieval_eval.h"

#include <algorithm>

#include "kernels/msa.h"
#include "train/per_layer_sums.h"

namespace msa {
namespace {

// The position of the fact that the query token at answer position t asks about: the query
// Q(k) there, the fact F(k, v) whose key is k (data/synthetic.h).
int64_t fact_position_for(const SyntheticSample& s, int64_t t) {
  const int32_t key = s.tokens[t] - kSyntheticQueryBase;
  for (int64_t f : s.fact_positions)
    if ((s.tokens[f] - kSyntheticFactBase) / kSyntheticValues == key) return f;
  MSA_CHECK(false, "synthetic sample: no fact for the query token %d at position %d", s.tokens[t],
            t);
  return 0;
}

}  // namespace

RetrievalResult evaluate_retrieval(Transformer& model, const SyntheticConfig& task, int64_t samples,
                                   int64_t batch, MsaMode mode, int64_t recall_stride,
                                   bool answer_recall, uint64_t first_sample) {
  const int64_t T = task.seq_len, V = model.config().vocab_size;
  RetrievalResult r;
  int64_t correct = 0, answer_queries = 0;
  double recall_rows = 0;
  double loss_sum = 0;
  ForwardOptions options;
  options.msa_mode = mode;
  options.for_backward = false;
  options.recall_query_stride =
      recall_stride > 0 ? bounded_recall_stride(T, recall_stride, model.device()) : 0;
  for (int64_t start = 0; start < samples; start += batch) {
    const int64_t n = std::min(batch, samples - start);
    Tensor tokens = Tensor::empty({n, T}, DType::kI32),
           targets = Tensor::empty({n, T}, DType::kI32);
    options.answer_positions.clear();
    options.answer_key_positions.clear();
    for (int64_t i = 0; i < n; ++i) {
      const SyntheticSample s = make_synthetic_sample(task, first_sample + start + i);
      std::copy(s.tokens.begin(), s.tokens.end(), tokens.data<int32_t>() + i * T);
      std::copy(s.targets.begin(), s.targets.end(), targets.data<int32_t>() + i * T);
      if (answer_recall)
        for (int64_t t : s.answer_positions) {
          options.answer_positions.push_back({i, t});
          options.answer_key_positions.push_back(fact_position_for(s, t));
        }
    }
    const ForwardResult f =
        model.forward(tokens.to(model.device()), targets.to(model.device()), options);
    // Only answer positions carry targets, so the LM loss is the answer loss.
    loss_sum += f.lm_loss * f.n_targets;
    // Weighted by the batch's sampled rows (a partial last batch counted as much as a full one).
    if (!f.index_recall.empty()) {
      const double w = f.recall_rows;
      add_per_layer(f.index_recall, w, r.index_recall);
      add_per_layer(f.block_recall, w, r.block_recall);
      add_per_layer(f.index_recall_ceiling, w, r.index_recall_ceiling);
      add_per_layer(f.max_pool_recall_ceiling, w, r.max_pool_recall_ceiling);
      recall_rows += w;
    }
    // Weighted by the batch's answers: a mean over every answer (and head or group).
    if (!f.answer_index_recall.empty()) {
      const double w = static_cast<double>(options.answer_positions.size());
      add_per_layer(f.answer_index_recall, w, r.answer_index_recall);
      add_per_layer(f.answer_block_recall, w, r.answer_block_recall);
      add_per_layer(f.answer_index_recall_ceiling, w, r.answer_index_recall_ceiling);
      add_per_layer(f.answer_key_selected, w, r.answer_fact_selected);
      answer_queries += static_cast<int64_t>(options.answer_positions.size());
    }
    Tensor logits = model.logits();
    if (logits.is_cuda()) logits = logits.to(Device::kCPU);
    if (logits.dtype() != DType::kF32) logits = logits.to(DType::kF32);
    const float* L = logits.data<float>();
    const int32_t* y = targets.data<int32_t>();
    for (int64_t row = 0; row < n * T; ++row) {
      if (y[row] == kIgnoreIndex) continue;
      const float* l = L + row * V;
      const int64_t best = std::max_element(l, l + V) - l;
      correct += best == y[row];
      ++r.answers;
    }
  }
  for (double& x : r.index_recall) x = recall_rows > 0 ? x / recall_rows : 1.0;
  for (double& x : r.block_recall) x = recall_rows > 0 ? x / recall_rows : 1.0;
  for (double& x : r.index_recall_ceiling) x = recall_rows > 0 ? x / recall_rows : 1.0;
  for (double& x : r.max_pool_recall_ceiling) x = recall_rows > 0 ? x / recall_rows : 1.0;
  for (double& x : r.answer_index_recall) x /= static_cast<double>(answer_queries);
  for (double& x : r.answer_block_recall) x /= static_cast<double>(answer_queries);
  for (double& x : r.answer_index_recall_ceiling) x /= static_cast<double>(answer_queries);
  for (double& x : r.answer_fact_selected) x /= static_cast<double>(answer_queries);
  r.accuracy = r.answers > 0 ? static_cast<double>(correct) / r.answers : 0.0;
  r.answer_loss = r.answers > 0 ? loss_sum / r.answers : 0.0;
  return r;
}

}  // namespace msa
