#!/usr/bin/env bash
# Natural text end to end (docs/quality.md, "Natural text"): text no one here wrote, tokenized with
# a byte-level BPE tokenizer.json, a dense and an MSA model trained on it, the dense one converted
# to MSA with the convert recipe, and the validation perplexity by position of all three.
#
#   corpus  every file under CORPUS_DIR is one document (docs/quality.md uses the Python 3.11
#           documentation's reStructuredText sources and Perl 5.36's pod pages, as Debian's
#           python3.11-doc and perl-doc ship them); files are sorted by path and every 20th is
#           held out for validation.
#   tokens  a byte-level BPE with Llama 3's pre-tokenizer regex and 8192 ids, trained on the
#           training documents by the `tokenizers` library (PYTHON must have it), then
#           `msa-data text --tokenizer` writes the shards (BOS before each document; the
#           tokenizer has no EOS, so the shards cannot be trained with --pack_documents).
#   models  8 layers, d_model 512, 8 heads / 2 KV groups, head dim 64; MSA block 64, top-k 4:
#           a 256-token budget, trained at 4096 tokens (16x).
#   eval    msa-eval --data: loss by position (0-256 = 1x the budget ... 2K-4K = 8x-16x).
#
# Usage: scripts/natural_text_experiment_gpu.sh CORPUS_DIR [OUT_DIR]
#   BIN (default build): the programs; PYTHON (default python3); STEPS (default 1200).
set -euo pipefail
corpus=${1:?usage: $0 CORPUS_DIR [OUT_DIR]}
out=${2:-out/natural_text}
[[ $# -le 2 && $corpus != -* && $out != -* ]] ||
  { echo "usage: $0 CORPUS_DIR [OUT_DIR]" >&2; exit 2; }
bin=${BIN:-build}
py=${PYTHON:-python3}
steps=${STEPS:-1200}
[[ $steps =~ ^[0-9]+$ ]] && (( steps >= 100 )) ||
  { echo "$0: STEPS=$steps must be a number >= 100 (the converted run trains STEPS/2)" >&2; exit 1; }
[[ -d $corpus ]] || { echo "$0: $corpus is not a directory" >&2; exit 1; }
mapfile -t files < <(find "$corpus" -type f -size +0 | LC_ALL=C sort)
# (With no file, `cat` below would read stdin.)
(( ${#files[@]} >= 20 )) ||
  { echo "$0: $corpus holds ${#files[@]} non-empty files; every 20th is held out: need 20" >&2
    exit 1; }
# msa-data's --input is a comma-separated list.
for f in "${files[@]}"; do
  [[ $f != *,* ]] || { echo "$0: '$f' has a comma in its path (msa-data --input splits on commas)" >&2
                       exit 1; }
done
mkdir -p -- "$out"
# The runs' checkpoint folders are this script's own: a rerun starts them afresh (msa-train refuses
# a --checkpoint_dir that holds checkpoints without --resume). Only once the arguments are good.
rm -rf "$out/dense" "$out/msa" "$out/converted" "$out/converted.h5"
train_docs=() val_docs=()
for i in "${!files[@]}"; do
  if (( i % 20 == 7 )); then val_docs+=("${files[$i]}"); else train_docs+=("${files[$i]}"); fi
done
echo "corpus: ${#files[@]} documents, $(cat "${files[@]}" | wc -c) bytes; ${#val_docs[@]} held out"

printf '%s\n' "${train_docs[@]}" > "$out/train_files.txt"
"$py" - "$out/tokenizer.json" "$out/train_files.txt" <<'PY'
import sys
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
out, listing = sys.argv[1], sys.argv[2]
files = [l.strip() for l in open(listing) if l.strip()]
llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(llama3), behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tok.decoder = decoders.ByteLevel()
special = ["<|begin_of_text|>", "<|end_of_text|>"]
trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=special,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train(files, trainer)
bos = tok.token_to_id(special[0])
tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                   special_tokens=[(special[0], bos)])
tok.save(out)
print(f"tokenizer: {tok.get_vocab_size()} ids -> {out}")
PY

join() { local IFS=,; echo "$*"; }
"$bin/msa-data" text --tokenizer="$out/tokenizer.json" --input="$(join "${train_docs[@]}")" \
  --output="$out/train" --prefix=train --overwrite
"$bin/msa-data" text --tokenizer="$out/tokenizer.json" --input="$(join "${val_docs[@]}")" \
  --output="$out/val" --prefix=val --overwrite
# The validation windows of 4096 tokens the shards hold (uint16 ids after a 32-byte header; one
# more token for the targets): up to 48 are evaluated. Checked before any training.
val_windows=0
for f in "$out"/val/*.tok; do
  n=$(( ($(stat -c %s "$f") - 32) / 2 ))
  val_windows=$(( val_windows + (n > 0 ? (n - 1) / 4096 : 0) ))
done
(( val_windows >= 1 )) ||
  { echo "$0: the held-out documents make no 4096-token window: use a larger corpus" >&2; exit 1; }
eval_windows=$(( val_windows < 48 ? val_windows : 48 ))

model="--vocab_size=8192 --d_model=512 --n_layers=8 --n_heads=8 --n_kv_heads=2 --head_dim=64
       --ffn_dim=1536 --msa_block_size=64 --msa_topk=4 --msa_index_dim=64"
# An array: OUT_DIR may hold spaces (and the glob is msa-train's, not the shell's).
train=(--device=cuda "--data=$out/train/*.tok" --seq_len=4096 --batch_size=8 --steps="$steps"
       --lr=1e-3 --min_lr=1e-4 --warmup_steps=100 --log_every=100 --seed=1
       --recall_every=$(( steps / 2 )) --recall_stride=256)
ckpt=$(printf 'ckpt-%08d.h5' "$steps")
t0=$(date +%s)
"$bin/msa-train" $model "${train[@]}" --attention=dense --checkpoint_dir="$out/dense" | tee "$out/dense.log"
t1=$(date +%s)
"$bin/msa-train" $model "${train[@]}" --attention=msa --checkpoint_dir="$out/msa" | tee "$out/msa.log"
t2=$(date +%s)
# The convert recipe (docs/convert.md): dense attention while the fresh index warms up with the
# backbone training, then sparse; a third of the steps in all.
conv_steps=$(( steps / 3 ))
"$bin/msa-convert" --checkpoint="$out/dense/$ckpt" --output="$out/converted.h5" \
  --msa_block_size=64 --msa_topk=4 --msa_index_dim=64
"$bin/msa-train" $model "${train[@]/--steps=$steps/--steps=$conv_steps}" --attention=msa \
  --init_from="$out/converted.h5" --dense_attention_steps=$(( conv_steps / 3 )) --lr=3e-4 \
  --min_lr=3e-5 --checkpoint_dir="$out/converted" | tee "$out/converted.log"
t3=$(date +%s)
conv_ckpt=$(printf 'ckpt-%08d.h5' "$conv_steps")
"$bin/msa-eval" --device=cuda --data="$out/val/*.tok" --seq_len=4096 --eval_windows=$eval_windows \
  --position_buckets=0,256,512,1024,2048 \
  --checkpoint="$out/dense/$ckpt,$out/msa/$ckpt,$out/converted/$conv_ckpt" \
  --labels=dense,msa,converted --csv="$out/perplexity.csv" --plot="$out/perplexity.png" \
  | tee "$out/perplexity.md"
echo "times: dense $((t1 - t0)) s, msa $((t2 - t1)) s, convert + training $((t3 - t2)) s"
