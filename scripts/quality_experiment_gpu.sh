#!/usr/bin/env bash
# The GPU-sized long-context quality experiment (docs/quality.md): a 4-layer model trained on
# synthetic key-value retrieval at 2048 tokens, 8x the MSA budget k*B = 4 x 64, with (a) dense
# attention, (b) MSA from scratch (the default index warm-up: dense attention + KL over every
# causal token for the first 2% of the steps, then sparse), (c) dense (a) converted to MSA with
# the convert recipe (dense attention while the index warms up, the backbone training, then
# sparse); then msa-eval at 1024..4096 tokens and three depths. Head dim 64: the tensor-core
# sparse-attention kernels take it. MSA_WARMUP overrides (b)'s --dense_attention_steps.
# Usage: scripts/quality_experiment_gpu.sh [OUT_DIR]   (needs a CUDA GPU; BIN=dir of the programs)
set -euo pipefail
out=${1:-out/quality_gpu}
bin=${BIN:-build}
[[ $# -le 1 && $out != -* ]] || { echo "usage: $0 [OUT_DIR]" >&2; exit 2; }
mkdir -p -- "$out"
# The runs' checkpoint folders are this script's own: a rerun starts them afresh (msa-train refuses
# a --checkpoint_dir that holds checkpoints without --resume).
rm -rf "$out/dense" "$out/msa" "$out/converted" "$out/converted.h5"
model="--vocab_size=96 --d_model=256 --n_layers=4 --n_heads=8 --n_kv_heads=2 --head_dim=64
       --ffn_dim=1024 --msa_block_size=64 --msa_topk=4 --msa_index_dim=64"
train="--device=cuda --data=synthetic:kv-recall --synthetic_pairs=8 --synthetic_depth=-1
       --seq_len=2048 --batch_size=16 --steps=1200 --lr=2e-3 --min_lr=2e-4 --warmup_steps=50
       --log_every=200 --recall_every=400 --recall_stride=64 --seed=1"
# An array: OUT_DIR may hold spaces.
evalflags=(--lengths=1024,2048,4096 --depths=0,0.5,1 --pairs=8 --samples=64 --batch_size=8
           --device=cuda --out_dir="$out")
t0=$(date +%s)
"$bin"/msa-train $model $train --attention=dense --checkpoint_dir="$out/dense" | tee "$out/dense.log"
t1=$(date +%s)
"$bin"/msa-train $model $train --attention=msa ${MSA_WARMUP:+--dense_attention_steps=$MSA_WARMUP} \
  --checkpoint_dir="$out/msa" | tee "$out/msa.log"
t2=$(date +%s)
"$bin"/msa-convert --checkpoint="$out/dense/ckpt-00001200.h5" --output="$out/converted.h5" \
  --msa_block_size=64 --msa_topk=4 --msa_index_dim=64
"$bin"/msa-train $model ${train/--steps=1200/--steps=400} --attention=msa \
  --init_from="$out/converted.h5" --dense_attention_steps=150 --lr=5e-4 --min_lr=5e-5 \
  --checkpoint_dir="$out/converted" | tee "$out/converted.log"
t3=$(date +%s)
for run in dense msa; do
  "$bin"/msa-eval --checkpoint="$out/$run/ckpt-00001200.h5" --name="$run" "${evalflags[@]}"
done
"$bin"/msa-eval --checkpoint="$out/converted/ckpt-00000400.h5" --name=converted "${evalflags[@]}"
echo "times: dense $((t1 - t0)) s, msa $((t2 - t1)) s, convert + warm-up + sparse $((t3 - t2)) s, total $(( $(date +%s) - t0 )) s"
