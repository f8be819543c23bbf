#!/usr/bin/env python3
"""Compares msa-train's forward with Hugging Face transformers' on converted checkpoints.

Builds tiny random LlamaForCausalLM and Qwen2ForCausalLM models, saves them with
save_pretrained (safetensors), converts them with msa-convert (all layers MSA), runs one sequence
through `msa-eval --attention_mode=dense --dump_logits_tokens=...` (MSA layers attend densely:
the converted model's outputs before sparse training) and through transformers, and prints the
largest logit difference relative to the largest logit. Skips (exit 0) without torch and
transformers. Usage: hf_reference_check.py BIN_DIR WORK_DIR
"""
import json
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
    import transformers
except ImportError as e:  # not a failure: the check needs the optional packages
    print(f"SKIP: {e}")
    sys.exit(0)


def check(arch, bin_dir, work, dtype):
    torch.manual_seed(0)
    common = dict(vocab_size=211, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(cfg)
    model = model.to(dtype).eval()
    hf_dir = os.path.join(work, f"{arch}_hf")
    model.save_pretrained(hf_dir, safe_serialization=True)
    ckpt = os.path.join(work, f"{arch}_msa.h5")
    subprocess.run([f"{bin_dir}/msa-convert", f"--hf_dir={hf_dir}", f"--output={ckpt}",
                    "--msa_block_size=16", "--msa_topk=2", "--msa_index_dim=16"], check=True)
    tokens = [int(x) for x in torch.randint(0, 211, (96,))]
    out = os.path.join(work, f"{arch}_logits.f32")
    subprocess.run([f"{bin_dir}/msa-eval", f"--checkpoint={ckpt}", "--device=cpu",
                    "--attention_mode=dense", f"--dump_logits={out}",
                    "--dump_logits_tokens=" + ",".join(map(str, tokens))], check=True)
    ours = np.fromfile(out, dtype=np.float32).reshape(len(tokens), -1)
    with torch.no_grad():
        ref = model.float()(torch.tensor([tokens])).logits[0].numpy()
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"{arch:6s} {str(dtype):15s} max |ours - transformers| / max |logit| = {err:.2e}")
    return err


def main():
    bin_dir, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    worst = 0.0
    for arch in ("llama", "qwen2"):
        for dtype in (torch.float32, torch.bfloat16):
            worst = max(worst, check(arch, bin_dir, work, dtype))
    # Our CPU forward is fp32 on the (exactly converted) weights, as is the reference run.
    ok = worst < 1e-4
    print("PASS" if ok else "FAIL", f"worst {worst:.2e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
