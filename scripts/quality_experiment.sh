#!/usr/bin/env bash
# The long-context quality experiment of docs/quality.md (CPU-sized): the same small model trained
# on synthetic key-value retrieval (a) with dense attention, (b) with MSA from scratch (the default
# recipe: index warm-up for 2% of the steps, then sparse), (c) with MSA after a long dense-attention
# phase, and (d) dense (a) converted to MSA with the convert recipe (dense attention while the index
# warms up, the backbone training, then sparse), then evaluated by msa-eval at 256..1024 tokens
# (4x..16x the MSA budget k*B = 64).
# Usage: scripts/quality_experiment.sh [OUT_DIR]   (build first: scripts/build.sh)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# OUT_DIR relative to where the script is run (the default under the repository).
out=${1:-$repo/out/quality}
[[ $# -le 1 && $out != -* ]] || { echo "usage: $0 [OUT_DIR]" >&2; exit 2; }
mkdir -p -- "$out"
out=$(cd "$out" && pwd)
cd "$repo"
# The runs' checkpoint folders are this script's own: a rerun starts them afresh (msa-train refuses
# a --checkpoint_dir that holds checkpoints without --resume).
rm -rf "$out/dense" "$out/msa" "$out/msa_dense_first" "$out/converted" "$out/converted.h5"
bin=build
model="--vocab_size=96 --d_model=64 --n_layers=2 --n_heads=4 --n_kv_heads=2 --head_dim=16
       --ffn_dim=128 --msa_block_size=16 --msa_topk=4 --msa_index_dim=16"
train="--device=cpu --data=synthetic:kv-recall --synthetic_pairs=4 --synthetic_depth=0 --seq_len=512
       --batch_size=8 --steps=800 --lr=5e-3 --min_lr=5e-4 --warmup_steps=20 --log_every=100
       --recall_every=0 --seed=1"
# An array: OUT_DIR may hold spaces.
evalflags=(--lengths=256,512,1024 --depths=0,0.5,1 --samples=32 --batch_size=8 --device=cpu
           --out_dir="$out")
t0=$(date +%s)
$bin/msa-train $model $train --attention=dense --checkpoint_dir="$out/dense" | tee "$out/dense.log"
$bin/msa-train $model $train --attention=msa --checkpoint_dir="$out/msa" | tee "$out/msa.log"
$bin/msa-train $model $train --attention=msa --dense_attention_steps=500 --checkpoint_dir="$out/msa_dense_first" \
  | tee "$out/msa_dense_first.log"
# (d) convert the dense model, warm the index up for 100 steps, then 300 sparse steps.
$bin/msa-convert --checkpoint="$out/dense/ckpt-00000800.h5" --output="$out/converted.h5" \
  --msa_block_size=16 --msa_topk=4 --msa_index_dim=16
$bin/msa-train $model ${train/--steps=800/--steps=400} --attention=msa --init_from="$out/converted.h5" \
  --dense_attention_steps=100 --lr=1e-3 --min_lr=1e-4 --checkpoint_dir="$out/converted" | tee "$out/converted.log"
for run in dense msa msa_dense_first; do
  $bin/msa-eval --checkpoint="$out/$run/ckpt-00000800.h5" --name="$run" "${evalflags[@]}"
done
$bin/msa-eval --checkpoint="$out/converted/ckpt-00000400.h5" --name=converted "${evalflags[@]}"
echo "quality experiment: $(( $(date +%s) - t0 )) s"
