#!/usr/bin/env python3
"""Compares msa-train's forward with Hugging Face transformers' on converted checkpoints.

For every family msa-convert reads (Llama, tied Llama, Mistral, Qwen2, Qwen3) it builds tiny
random models with RoPE theta 500000 and 1e6, plain, with Llama 3.1's `llama3` scaling and with
`linear` scaling, saves each with save_pretrained (transformers 5 writes `rope_parameters`) and
again with config.json rewritten to transformers 4's spelling (top-level `rope_theta` +
`rope_scaling`; transformers itself reloads that copy to confirm it is the same model), converts
both with msa-convert (all layers MSA), runs 256 random tokens through
`msa-eval --device=cpu --attention_mode=dense --dump_logits_tokens=...` (fp32, MSA layers attending
densely: the converted model's outputs before sparse training) and through transformers (fp32),
and requires max |ours - transformers| / max |logit| < 1e-4. original_max_position_embeddings is
64, so at 256 tokens llama3's three bands (kept, interpolated, divided) all act.

Sanity rows, not counted: the same checkpoint converted with a deliberately wrong theta (10000,
what a transformers 5 config gave before rope_parameters was read) or with the llama3 scaling
dropped must FAIL the bound (else the check could not see a RoPE error). Refusal rows: yarn and
partial_rotary_factor (which transformers' Llama/Mistral/Qwen2/Qwen3 do not apply) must be refused
by msa-convert naming the field.

Prints a Markdown table; exits non-zero on any failure. Skips (exit 0) without torch and
transformers. Usage: hf_reference_check.py BIN_DIR WORK_DIR
"""
import json
import os
import shutil
import subprocess
import sys

try:
    import numpy as np
    import torch
    import transformers
except ImportError as e:  # not a failure: the check needs the optional packages
    print(f"SKIP: {e}")
    sys.exit(0)

BOUND = 1e-4
SEQ = 256
ORIGINAL_MAX = 64
VOCAB = 211

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"use_sliding_window": False}),
}

# (theta, rope_parameters without rope_theta)
ROPES = [
    (500000.0, {"rope_type": "default"}),
    (1e6, {"rope_type": "default"}),
    (500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL_MAX}),
    (1e6, {"rope_type": "linear", "factor": 4.0}),
]

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def make_model(family, theta, rope, dtype):
    config_cls, model_cls, extra = FAMILIES[family]
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)
    common.update(extra)
    if TRANSFORMERS_5:
        common["rope_parameters"] = {"rope_theta": theta, **rope}
    else:
        common["rope_theta"] = theta
        common["rope_scaling"] = None if rope["rope_type"] == "default" else dict(rope)
    cfg = getattr(transformers, config_cls)(**common)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).to(dtype).eval()
    emb = model.model.rotary_emb
    assert getattr(emb, "rope_type", rope["rope_type"]) == rope["rope_type"], emb.rope_type
    assert float(getattr(emb, "attention_scaling", 1.0)) == 1.0
    return model


def to_v4_spelling(src, dst, theta, rope, type_key):
    """Copies a saved model with config.json in transformers 4's spelling."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    path = os.path.join(dst, "config.json")
    cfg = json.load(open(path))
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = theta
    if rope["rope_type"] == "default":
        cfg["rope_scaling"] = None
    else:
        scaling = {k: v for k, v in rope.items() if k != "rope_type"}
        scaling[type_key] = rope["rope_type"]
        cfg["rope_scaling"] = scaling
    json.dump(cfg, open(path, "w"), indent=2)


def edit_config(src, dst, edit):
    shutil.copytree(src, dst, dirs_exist_ok=True)
    path = os.path.join(dst, "config.json")
    cfg = json.load(open(path))
    edit(cfg)
    json.dump(cfg, open(path, "w"), indent=2)


def convert(bin_dir, hf_dir, ckpt):
    if os.path.exists(ckpt):  # a rerun into the same WORK_DIR (msa-convert never overwrites)
        os.remove(ckpt)
    return subprocess.run([f"{bin_dir}/msa-convert", f"--hf_dir={hf_dir}", f"--output={ckpt}",
                           "--msa_block_size=16", "--msa_topk=2", "--msa_index_dim=16"],
                          capture_output=True, text=True)


def our_logits(bin_dir, ckpt, tokens, out):
    r = subprocess.run([f"{bin_dir}/msa-eval", f"--checkpoint={ckpt}", "--device=cpu",
                        "--attention_mode=dense", f"--dump_logits={out}",
                        "--dump_logits_tokens=" + ",".join(map(str, tokens))],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"msa-eval failed on {ckpt}:\n{r.stdout}{r.stderr}")
    return np.fromfile(out, dtype=np.float32).reshape(len(tokens), -1)


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def describe(rope):
    if rope["rope_type"] == "default":
        return "default"
    return rope["rope_type"] + " (" + ", ".join(f"{k}={v}" for k, v in rope.items()
                                              if k != "rope_type") + ")"


def main():
    bin_dir, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}\n")
    tokens = [int(x) for x in torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(1))]
    rows, sanity, refusals, failures = [], [], [], []
    n = 0
    for family in FAMILIES:
        for theta, rope in ROPES:
            dtypes = [torch.float32]
            if rope["rope_type"] == "default" and theta == 500000.0 and family in ("llama", "qwen2"):
                dtypes.append(torch.bfloat16)
            for dtype in dtypes:
                n += 1
                model = make_model(family, theta, rope, dtype)
                v5_dir = os.path.join(work, f"m{n}_v5")
                model.to(dtype).save_pretrained(v5_dir)
                # The reference is the saved model as transformers loads it in fp32, not the model
                # in memory: .to(bfloat16) also rounds the rotary inv_freq buffer (7e-5 of the
                # logits at theta 500000), which from_pretrained recomputes in fp32.
                model = type(model).from_pretrained(v5_dir, dtype=torch.float32).eval()
                with torch.no_grad():
                    ref = model(torch.tensor([tokens])).logits[0].numpy()
                saved = json.load(open(os.path.join(v5_dir, "config.json")))
                spellings = [("saved (" + ("rope_parameters" if "rope_parameters" in saved
                                            else "rope_theta/rope_scaling") + ")", v5_dir)]
                type_key = "type" if rope["rope_type"] == "linear" else "rope_type"
                v4_dir = os.path.join(work, f"m{n}_v4")
                to_v4_spelling(v5_dir, v4_dir, theta, rope, type_key)
                spellings.append((f"rope_theta + rope_scaling ('{type_key}')", v4_dir))
                # transformers reads the rewritten copy as the same model.
                reloaded = type(model).from_pretrained(v4_dir, dtype=torch.float32).eval()
                with torch.no_grad():
                    again = reloaded(torch.tensor([tokens])).logits[0].numpy()
                if rel_err(again, ref) > 1e-6:
                    failures.append(f"{family}: transformers reads the v4-spelled copy differently "
                                    f"({rel_err(again, ref):.1e})")
                for spelling, hf_dir in spellings:
                    ckpt = hf_dir + ".h5"
                    r = convert(bin_dir, hf_dir, ckpt)
                    if r.returncode != 0:
                        rows.append((family, spelling, str(dtype).split(".")[-1], theta,
                                     describe(rope), float("nan"), "FAIL (refused)"))
                        failures.append(f"{family} {spelling}: {r.stderr.strip()}")
                        continue
                    err = rel_err(our_logits(bin_dir, ckpt, tokens, ckpt + ".f32"), ref)
                    ok = err < BOUND
                    rows.append((family, spelling, str(dtype).split(".")[-1], theta,
                                 describe(rope), err, "ok" if ok else "FAIL"))
                    if not ok:
                        failures.append(f"{family} {spelling} {describe(rope)}: {err:.2e}")
                # Sanity rows on the Llama runs: a RoPE read wrong must fail the bound.
                if family == "llama" and dtype == torch.float32 and theta == 500000.0:
                    def wrong_theta(cfg):
                        cfg["rope_parameters"]["rope_theta"] = 10000.0
                        cfg.pop("rope_theta", None)

                    def no_scaling(cfg):
                        cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
                        cfg["rope_scaling"] = None

                    edits = [("theta 10000 instead of 500000", wrong_theta)]
                    if rope["rope_type"] == "llama3":
                        edits = [("llama3 scaling dropped", no_scaling)]
                    for label, edit in edits:
                        bad_dir = os.path.join(work, f"m{n}_sanity")
                        edit_config(v5_dir, bad_dir, edit)
                        r = convert(bin_dir, bad_dir, bad_dir + ".h5")
                        if r.returncode != 0:
                            failures.append(f"sanity {label}: conversion failed: {r.stderr}")
                            continue
                        err = rel_err(our_logits(bin_dir, bad_dir + ".h5", tokens,
                                                 bad_dir + ".f32"), ref)
                        sanity.append((label, err, "fails the bound, as it must" if err >= BOUND
                                       else "PASSES the bound: the check is blind"))
                        if err < BOUND:
                            failures.append(f"sanity {label}: {err:.2e} passes the bound")
                # Refusals (once): what transformers would compute differently or we do not implement.
                if family == "llama" and n == 1:
                    cases = [
                        ("rope_parameters.rope_type", "yarn", lambda c: c.update(
                            rope_parameters={"rope_theta": theta, "rope_type": "yarn",
                                             "factor": 4.0, "original_max_position_embeddings": 64})),
                        ("partial_rotary_factor", "0.5 (top level)",
                         lambda c: c.update(partial_rotary_factor=0.5)),
                        ("rope_parameters.partial_rotary_factor", "0.5",
                         lambda c: c["rope_parameters"].update(partial_rotary_factor=0.5)),
                    ]
                    for field, value, edit in cases:
                        bad_dir = os.path.join(work, f"refuse_{len(refusals)}")
                        edit_config(v5_dir, bad_dir, edit)
                        r = convert(bin_dir, bad_dir, bad_dir + ".h5")
                        named = r.returncode == 1 and f"field '{field}'" in r.stderr + r.stdout
                        refusals.append((field, value, r.returncode,
                                         "refused, naming it" if named else "NOT REFUSED"))
                        if not named:
                            failures.append(f"refusal {field}: rc {r.returncode} {r.stderr}")

    print("| family | config.json spelling | weights | theta | scaling | max err / max logit | |")
    print("|---|---|---|---|---|---|---|")
    for family, spelling, dt, theta, scaling, err, verdict in rows:
        print(f"| {family} | {spelling} | {dt} | {theta:g} | {scaling} | {err:.2e} | {verdict} |")
    print("\nSanity (not counted; each must fail the bound):\n")
    print("| Llama, deliberately wrong RoPE | max err / max logit | |")
    print("|---|---|---|")
    for label, err, verdict in sanity:
        print(f"| {label} | {err:.2e} | {verdict} |")
    print("\nRefusals:\n")
    print("| field | value | msa-convert exit | |")
    print("|---|---|---|---|")
    for field, value, rc, verdict in refusals:
        print(f"| {field} | {value} | {rc} | {verdict} |")
    worst = max((r[5] for r in rows if r[5] == r[5]), default=float("nan"))
    print()
    for f in failures:
        print("FAIL:", f)
    print("PASS" if not failures else "FAIL", f"{len(rows)} conversions, worst {worst:.2e} "
          f"(bound {BOUND:g})")
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
