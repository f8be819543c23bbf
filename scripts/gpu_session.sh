#!/usr/bin/env bash
# One GPU-machine sitting (../shared/device/README.md): run from the repository root after
# `source .device/env.sh`. Steps are named on the command line so one call can do several:
#   tests    the GPU tests of the kernels (gpu_dense_test, gpu_msa_test, gpu_msa_indexer_test,
#            gpu_msa_index_loss_test, gpu_msa_recall_test, gpu_deterministic_test,
#            gpu_packed_documents_test)
#   sanitize compute-sanitizer memcheck + racecheck on the MSA kernel tests
#   msa      msa-bench msa at the paper's shape (H 64, G 4, d 128, d_I 128, B 128, k 16) and at
#            the earlier default (H 32, G 8, d_I 64): 8K/32K/128K fwd+bwd and 512K/1M fwd vs cuDNN
#   step     msa-bench step: the ~1B model at 32K (no recompute; dense vs all-MSA) and 128K
#            (full recompute; dense, the MSA model's index warm-up and all-MSA)
# Logs go to $OUT (when set) as <step>.log.
set -uo pipefail
out=${OUT:-/tmp/gpu_session}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
status=0
for step in "$@"; do
  echo "=== $step"
  case $step in
    tests) { rc=0
             for t in gpu_msa_indexer_test gpu_msa_index_loss_test gpu_msa_test gpu_dense_test \
                      gpu_msa_recall_test gpu_deterministic_test gpu_packed_documents_test; do
               $t --gtest_brief=1 || rc=1
             done
             exit $rc; } 2>&1 | tee "$out/tests.log" ;;
    sanitize)
      # racecheck runs ~100x slower: on the small tests (the wgmma ones are sized for it: the
      # indexer's and the index loss's teacher, WgmmaStagesSparse).
      { for t in gpu_msa_indexer_test gpu_msa_index_loss_test; do
          compute-sanitizer --tool memcheck --error-exitcode 1 $t --gtest_brief=1 2>&1 | tail -4
          compute-sanitizer --tool racecheck --error-exitcode 1 $t --gtest_brief=1 \
            --gtest_filter="${RACECHECK_FILTER:-*Small*:*WgmmaStagesSparse*}" 2>&1 | tail -4
        done
        compute-sanitizer --tool memcheck --error-exitcode 1 gpu_msa_test --gtest_brief=1 \
          --gtest_filter="${MEMCHECK_FILTER:-*KvOuter*:*Wgmma*:*NonFinite*}" 2>&1 | tail -4
      } | tee "$out/sanitize.log" ;;
    msa) { msa-bench msa --seqs=8192,32768,131072 --fwd_only_seqs=524288,1048576 --iters=3
           msa-bench msa --seqs=32768,131072 --heads=32 --groups=8 --index_dim=64 --iters=3
         } 2>&1 | tee "$out/msa.log" ;;
    step) { msa-bench step --model=1b --model_seqs=32768 --attention=both --recompute=none --steps=3
            msa-bench step --model=1b --model_seqs=131072 --attention=all --recompute=full --steps=2
          } 2>&1 | tee "$out/step.log" ;;
    *) echo "unknown step $step"; status=2 ;;
  esac
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
done
exit $status
