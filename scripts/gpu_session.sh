#!/usr/bin/env bash
# One GPU-machine sitting (../shared/device/README.md): run from the repository root after
# `source .device/env.sh`. Steps are named on the command line so one call can do several:
#   tests    the GPU tests (gpu_dense_test, gpu_msa_test, gpu_msa_indexer_test,
#            gpu_msa_index_loss_test, gpu_msa_recall_test, gpu_deterministic_test,
#            gpu_packed_documents_test, gpu_rope_test, gpu_vocab_parallel_test,
#            gpu_memory_estimate_test, gpu_init_from_test); fails when any fails or skips itself
#   sanitize compute-sanitizer memcheck + racecheck on the MSA kernel tests
#   msa      msa-bench msa at the paper's shape (H 64, G 4, d 128, d_I 128, B 128, k 16) and at
#            the earlier default (H 32, G 8, d_I 64): 8K/32K/128K fwd+bwd and 512K/1M fwd vs cuDNN
#   step     msa-bench step: the ~1B model at 32K (no recompute; dense vs all-MSA) and 128K
#            (full recompute; dense, the MSA model's index warm-up and all-MSA)
# Logs go to $OUT (when set) as <step>.log. Exits non-zero when any command of any step failed.
set -uo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 STEP... (tests, sanitize, msa, step)" >&2; exit 2; }
out=${OUT:-/tmp/gpu_session}
mkdir -p "$out"
# Without a GPU every GPU test skips itself and passes: that is a failed session, not a pass.
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader ||
  { echo "gpu_session.sh: no GPU (nvidia-smi failed)"; exit 1; }
status=0
# Runs one command of a step, its output through `tail -n $1` (0: all of it); marks the step failed
# when the command fails (a pipeline's status was only its last command's).
run() {
  local lines=$1; shift
  if [[ $lines -gt 0 ]]; then "$@" 2>&1 | tail -n "$lines"; else "$@" 2>&1; fi
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "gpu_session.sh: FAILED: $*"; rc=1; }
}
for step in "$@"; do
  echo "=== $step"
  rc=0
  case $step in
    tests)
      for t in gpu_msa_indexer_test gpu_msa_index_loss_test gpu_msa_test gpu_dense_test \
               gpu_msa_recall_test gpu_deterministic_test gpu_packed_documents_test \
               gpu_rope_test gpu_vocab_parallel_test gpu_memory_estimate_test gpu_init_from_test; do
        run 0 "$t" --gtest_brief=1
      done > >(tee "$out/tests.log") ;;
    sanitize)
      # racecheck runs ~100x slower: on the small tests (the wgmma ones are sized for it: the
      # indexer's and the index loss's teacher, WgmmaStagesSparse).
      { for t in gpu_msa_indexer_test gpu_msa_index_loss_test; do
          run 4 compute-sanitizer --tool memcheck --error-exitcode 1 "$t" --gtest_brief=1
          run 4 compute-sanitizer --tool racecheck --error-exitcode 1 "$t" --gtest_brief=1 \
            --gtest_filter="${RACECHECK_FILTER:-*Small*:*WgmmaStagesSparse*}"
        done
        run 4 compute-sanitizer --tool memcheck --error-exitcode 1 gpu_msa_test --gtest_brief=1 \
          --gtest_filter="${MEMCHECK_FILTER:-*KvOuter*:*Wgmma*:*NonFinite*}"
      } > >(tee "$out/sanitize.log") ;;
    msa) { run 0 msa-bench msa --seqs=8192,32768,131072 --fwd_only_seqs=524288,1048576 --iters=3
           run 0 msa-bench msa --seqs=32768,131072 --heads=32 --groups=8 --index_dim=64 --iters=3
         } > >(tee "$out/msa.log") ;;
    step) { run 0 msa-bench step --model=1b --model_seqs=32768 --attention=both --recompute=none \
              --steps=3
            run 0 msa-bench step --model=1b --model_seqs=131072 --attention=all --recompute=full \
              --steps=2
          } > >(tee "$out/step.log") ;;
    *) echo "unknown step $step"; rc=2 ;;
  esac
  [[ -z ${!-} ]] || wait "$!" 2>/dev/null  # the step's tee: its log is complete
  # A GPU test that skipped itself ran nothing.
  if [[ $step == tests ]] && grep -q '^\[  SKIPPED \]' "$out/tests.log" 2>/dev/null; then
    echo "gpu_session.sh: tests skipped themselves (no usable GPU?)"; rc=1
  fi
  (( rc <= status )) || status=$rc  # 1: a command failed, 2: an unknown step
done
exit $status
