#!/usr/bin/env python3
"""msa-tokenize against the Hugging Face `tokenizers` library: identical ids, and speed per core.

Usage: tokenizer_reference_check.py BIN_DIR WORK_DIR

Builds a tokenizer.json of each supported kind locally (no downloads) by training BPE with the
`tokenizers` library on generated text:
  gpt2        ByteLevel pre-tokenizer with the GPT-2 regex, <|endoftext|>
  roberta     the same model with ByteLevel(add_prefix_space=True)
  llama3      Split(Llama 3 regex) + ByteLevel(use_regex=False), ignore_merges, special tokens,
              TemplateProcessing with <|begin_of_text|>
  qwen2       NFC + Split(Qwen2 regex) + ByteLevel(use_regex=False), ChatML special tokens
  llama2      SentencePiece-style BPE: Prepend("▁") + Replace(" ", "▁"), byte_fallback, <unk>
  mistral     the same model with Metaspace(prepend_scheme="first", split=False) instead
then encodes several MB of varied text (many scripts, emoji, code, whitespace runs, numbers,
contractions, special tokens written in the text, random bytes decoded as UTF-8) with both the
library (add_special_tokens=False) and BIN_DIR/msa-tokenize, per line and as one document, and
requires 100% identical ids (the first mismatch is printed with context). Prints a Markdown table
of MB/s on one thread for each side. Exit status: 0 all identical, 1 a mismatch, 2 a setup error.
Prints "SKIP: ..." and exits 0 when the `tokenizers` package is missing. Runs in well under 3
minutes on a 16-core machine.
"""
import json
import os
import random
import struct
import subprocess
import sys
import time

CORPUS_BYTES = 3_000_000  # of text per encoding run (the training text is smaller)
VOCAB = 16000

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

WORDS = ("the of and to in is was for that on as with by at from his her they we you it this be "
         "are or not have had but what all were when there can an which their said if do will each "
         "about how up out them then she many some so these would other into has more two like him "
         "see time could no make than first been its who now people my made over did down only way "
         "find use may water long little very after words called just where most know tokenizer "
         "attention gradient checkpoint Transformer GPU throughput latency embedding").split()
CONTRACTIONS = ["don't", "I'm", "you're", "we've", "they'll", "he'd", "it's", "DON'T", "I'LL",
                "We'Re", "can't", "o'clock", "rock'n'roll", "'tis", "y'all", "IT'S", "she'D"]
SCRIPTS = [
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ξεσκεπάζω τὴν ψυχοφθόρα βδελυγμία.",
    "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ٠١٢٣٤٥٦٧٨٩",
    "דג סקרן שט בים מאוכזב ולפתע מצא חברה",
    "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले",
    "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน",
    "我能吞下玻璃而不伤身体。中华人民共和国成立于1949年10月1日。",
    "いろはにほへと ちりぬるを わかよたれそ つねならむ カタカナ ﾊﾝｶｸ",
    "다람쥐 헌 쳇바퀴에 타고파 ᄒᆞᆫ글 자모",
    "😀👍🏽👨‍👩‍👧‍👦🇫🇷❤️‍🔥🤖✨ 🎉🎉🎉",
    "e\u0301 a\u0308 n\u0303 Å Å ﬁ ① ² ½ Ⅻ ｆｕｌｌ ｗｉｄｔｈ ℌ ㎒",
    "ſ K Ⅸ µ ß ẞ İ ı ǅ",
]
CODE = [
    "def f(x):\n\treturn x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) {\n    a[i] += b[i];\n}\n",
    "    if (x != y && z >= 10) {\n        return -1;\n    }\n\n",
    "<html><body class=\"x\">&amp; &lt;</body></html>",
    "SELECT * FROM t WHERE id=42 AND name LIKE '%a_b%';",
    "{\"key\": [1, 2.5e-3, null], \"k2\": \"v\\n\"}",
    "x=>x*2; y -= 0x1F; z <<= 3; ptr->next ?? null; a::b::c",
    "$ ls -la | grep '\\.py$' > out.txt 2>&1",
]
SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>", "<s>", "</s>", "<unk>",
            "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|endoftext", "<s", "</s >"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", " \t ", "\u00a0", "\u3000", "\u2003", "\u180e", "\u200b",
          "\u2028", "\u0085", "\x0b", "\x0c", "\x1c", "\x1f", "\r", "    "]
# Blocks whose characters are assigned since long before Unicode 14 (PCRE2 10.42's tables), so that
# both regex engines agree on their properties.
RANDOM_RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
                 (0x5D0, 0x5EA), (0x620, 0x64A), (0x660, 0x669), (0x900, 0x97F), (0xE01, 0xE3A),
                 (0x1100, 0x1112), (0x1161, 0x1175), (0x11A8, 0x11C2), (0x2000, 0x2064),
                 (0x2190, 0x21FF), (0x3041, 0x3096), (0x30A0, 0x30FF), (0x4E00, 0x9FA5),
                 (0xAC00, 0xD7A3), (0xFF01, 0xFF5E), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F)]


def number(rng):
    k = rng.random()
    if k < 0.4:
        return str(rng.randrange(10 ** rng.randint(1, 12)))
    if k < 0.6:
        return f"{rng.random() * 10 ** rng.randint(0, 6):.{rng.randint(1, 5)}f}"
    if k < 0.8:
        return f"{rng.randrange(1, 10**9):,}"
    return f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def random_chars(rng, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(RANDOM_RANGES)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def line(rng):
    """One line of mixed content (no '\\n' inside)."""
    parts = []
    for _ in range(rng.randint(1, 40)):
        k = rng.random()
        if k < 0.45:
            w = rng.choice(WORDS)
            r = rng.random()
            parts.append(w.capitalize() if r < 0.1 else w.upper() if r < 0.13 else w)
        elif k < 0.52:
            parts.append(rng.choice(CONTRACTIONS))
        elif k < 0.60:
            parts.append(number(rng))
        elif k < 0.67:
            s = rng.choice(SCRIPTS)
            a = rng.randrange(len(s))
            parts.append(s[a:a + rng.randint(1, 30)])
        elif k < 0.72:
            parts.append(rng.choice(CODE).replace("\n", rng.choice([" ", "\t", "  "])))
        elif k < 0.75:
            parts.append(rng.choice(SPECIALS))
        elif k < 0.80:
            parts.append(random_chars(rng, rng.randint(1, 12)))
        elif k < 0.82:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
            parts.append(raw.decode("utf-8", "replace").replace("\n", " "))
        elif k < 0.87:
            parts.append(rng.choice(".,;:!?-()[]\"'…—/*&%$#@"))
        else:
            parts.append(rng.choice(SPACES))
        parts.append(rng.choice([" ", " ", " ", " ", "", "  ", "\t", ", ", ". "]))
    text = "".join(parts)
    if rng.random() < 0.1:
        text += rng.choice(["   ", "\t", " \t", "\r"])  # trailing whitespace
    return text


def make_corpus(seed, target_bytes):
    """Lines joined by newlines (sometimes blank lines and code blocks with real newlines)."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < target_bytes:
        k = rng.random()
        if k < 0.05:
            s = ""
        elif k < 0.12:
            s = rng.choice(CODE).rstrip("\n")
        else:
            s = line(rng)
        out.append(s)
        size += len(s.encode("utf-8")) + 1
    return "\n".join(out) + "\n"


def read_u32(path):
    with open(path, "rb") as f:
        data = f.read()
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def run_msa(binary, tokenizer, text_path, work, lines):
    out = os.path.join(work, "ids.bin")
    lengths = os.path.join(work, "lengths.bin")
    cmd = [binary, f"--tokenizer={tokenizer}", f"--input={text_path}", f"--output={out}",
           "--threads=1"]
    if lines:
        cmd += ["--lines", f"--output_lengths={lengths}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr}")
    seconds = None
    for ln in p.stderr.splitlines():
        if " s: " in ln and "MB/s" in ln:
            seconds = float(ln.split(" in ")[1].split(" s:")[0])
    return read_u32(out), (read_u32(lengths) if lines else None), seconds


def tokens_of(tok, ids):
    return [tok.id_to_token(i) for i in ids]


def report_line_mismatch(tok, lines, ref, got, name):
    for i, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            print(f"MISMATCH [{name}, per line] line {i}: {lines[i]!r}")
            k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"  first difference at id {k}")
            print(f"  tokenizers:   {a[max(0, k - 5):k + 8]} {tokens_of(tok, a[max(0, k - 5):k + 8])}")
            print(f"  msa-tokenize: {b[max(0, k - 5):k + 8]} {tokens_of(tok, b[max(0, k - 5):k + 8])}")
            return
    print(f"MISMATCH [{name}, per line]: {len(ref)} vs {len(got)} lines")


def report_whole_mismatch(tok, text, enc, got, name):
    ref = enc.ids
    k = next((j for j, (x, y) in enumerate(zip(ref, got)) if x != y), min(len(ref), len(got)))
    print(f"MISMATCH [{name}, whole text]: {len(ref)} vs {len(got)} ids, first difference at id {k}")
    if k < len(enc.offsets):
        b, e = enc.offsets[k]
        print(f"  text around it: {text[max(0, b - 40):e + 40]!r}")
    print(f"  tokenizers:   {ref[max(0, k - 5):k + 8]} {tokens_of(tok, ref[max(0, k - 5):k + 8])}")
    print(f"  msa-tokenize: {got[max(0, k - 5):k + 8]} {tokens_of(tok, got[max(0, k - 5):k + 8])}")


def build_tokenizers(train_lines, work):
    """Returns [(name, path of tokenizer.json)], every file made here from the training text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers, Regex

    def train(pre, specials, vocab_size, initial_alphabet=(), limit_alphabet=None, normalizer=None):
        t = Tokenizer(models.BPE())
        if normalizer is not None:
            t.normalizer = normalizer
        t.pre_tokenizer = pre
        extra = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                      special_tokens=list(specials), show_progress=False,
                                      initial_alphabet=list(initial_alphabet), **extra)
        t.train_from_iterator(train_lines, trainer=trainer)
        return json.loads(t.to_str())

    def save(name, j, config=None):
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        Tokenizer.from_file(path)  # the library must accept what we edited
        if config is not None:
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump(config, f)
        return name, path

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    out = []
    gpt2 = train(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"], VOCAB,
                 alphabet)
    out.append(save("gpt2", gpt2))
    roberta = json.loads(json.dumps(gpt2))
    roberta["pre_tokenizer"]["add_prefix_space"] = True
    out.append(save("roberta", roberta))

    def regex_byte_level(pattern):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    llama3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"] + [
        f"<|reserved_special_token_{i}|>" for i in range(8)]
    llama3 = train(regex_byte_level(LLAMA3_PATTERN), [], VOCAB, alphabet)
    llama3["model"]["ignore_merges"] = True
    # Specials numbered after the model's vocabulary, as in Llama 3.
    base = len(llama3["model"]["vocab"])
    llama3["added_tokens"] = [
        {"id": base + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for i, c in enumerate(llama3_specials)]
    llama3["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [base],
                                                 "tokens": ["<|begin_of_text|>"]}}}
    out.append(save("llama3", llama3, {"bos_token": "<|begin_of_text|>",
                                       "eos_token": "<|end_of_text|>"}))

    qwen2 = train(regex_byte_level(QWEN2_PATTERN), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  VOCAB, alphabet, normalizer=normalizers.NFC())
    out.append(save("qwen2", qwen2, {"bos_token": None, "eos_token": "<|endoftext|>"}))

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    sp = train(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
               ["<unk>", "<s>", "</s>"] + byte_tokens, 8000, limit_alphabet=300)
    # Llama 2's layout: byte tokens live in the vocabulary only; the normalizers do the "▁" work.
    sp["added_tokens"] = [t for t in sp["added_tokens"] if t["content"] not in set(byte_tokens)]
    sp["model"].update({"byte_fallback": True, "unk_token": "<unk>", "fuse_unk": True})
    sp["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    sp["pre_tokenizer"] = None
    sp["decoder"] = None
    out.append(save("llama2", sp, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
                                   "add_eos_token": False}))
    mistral = json.loads(json.dumps(sp))
    mistral["normalizer"] = None
    mistral["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                                "prepend_scheme": "first", "split": False}
    out.append(save("mistral", mistral))
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    bin_dir, work = sys.argv[1], sys.argv[2]
    try:
        import tokenizers
        from tokenizers import Tokenizer
    except ImportError:
        print("SKIP: the `tokenizers` package is not installed")
        return 0
    binary = os.path.join(bin_dir, "msa-tokenize")
    if not os.access(binary, os.X_OK):
        print(f"error: {binary} not found (build the msa-tokenize target)")
        return 2
    os.makedirs(work, exist_ok=True)
    started = time.time()
    print(f"tokenizers {tokenizers.__version__}; building tokenizers in {work}", flush=True)

    train_lines = make_corpus(1, 1_500_000).split("\n")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # training may use every core
    built = build_tokenizers(train_lines, work)
    print(f"trained {len(built)} tokenizers in {time.time() - started:.1f} s", flush=True)

    text = make_corpus(2, CORPUS_BYTES)
    text_path = os.path.join(work, "text.txt")
    with open(text_path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # msa-tokenize --lines: a final newline ends the last line, adds none
    mb = len(text.encode("utf-8")) / 1e6
    # From here on the library encodes on one thread (read at every call).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"

    rows, failed = [], False
    for name, path in built:
        for mode in ("lines", "whole"):
            tok = Tokenizer.from_file(path)  # a fresh cache for each timing
            t0 = time.perf_counter()
            if mode == "lines":
                encs = tok.encode_batch(lines, add_special_tokens=False)
                ref = [e.ids for e in encs]
            else:
                enc = tok.encode(text, add_special_tokens=False)
                ref = enc.ids
            ref_s = time.perf_counter() - t0
            got, lengths, msa_s = run_msa(binary, path, text_path, work, mode == "lines")
            if mode == "lines":
                split, at = [], 0
                for n in lengths:
                    split.append(got[at:at + n])
                    at += n
                ok = split == ref
                n_ids = len(got)
                if not ok:
                    report_line_mismatch(tok, lines, ref, split, name)
            else:
                ok = got == ref
                n_ids = len(ref)
                if not ok:
                    report_whole_mismatch(tok, text, enc, got, name)
            failed |= not ok
            rows.append((name, mode, n_ids, mb / ref_s, mb / msa_s if msa_s else float("nan"), ok))
            print(f"{name:8s} {mode:5s} {'identical' if ok else 'MISMATCH'}", flush=True)

    print()
    print(f"Text: {mb:.2f} MB, {len(lines)} lines. One thread each side; tokenizers "
          f"{tokenizers.__version__} (encode_batch per line, encode whole), msa-tokenize "
          f"--threads=1 (encoding time only, both).")
    print()
    print("| tokenizer | mode | ids | tokenizers MB/s | msa-tokenize MB/s | speedup | identical |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, mode, n, ref_mbs, msa_mbs, ok in rows:
        print(f"| {name} | {mode} | {n} | {ref_mbs:.2f} | {msa_mbs:.2f} | {msa_mbs / ref_mbs:.2f}x "
              f"| {'yes' if ok else 'NO'} |")
    print(f"\ntotal {time.time() - started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
