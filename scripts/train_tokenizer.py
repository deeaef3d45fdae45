#!/usr/bin/env python3
"""Train the small byte-level BPE tokenizer shipped with mobilemoe_export.

Input: python_export/mobilemoe_export/assets/corpus.txt (original English prose, a little code and
a few words in other scripts, written for this project; public domain / project license). Output:
python_export/mobilemoe_export/assets/tokenizer.json (committed; the `tiny` preset's vocabulary size
equals its vocabulary size), and runner/tests/fixtures/tokenizer_cases.json (sample strings with
the ids this tokenizer gives them; the Rust runner's tokenizer tests compare against it).

The tokenizer is the GPT-2 style ByteLevel BPE of HF `tokenizers`: ByteLevel pre-tokenizer (GPT-2
split regex, no prefix space), BPE model without unk token, ByteLevel decoder, one special token
`<|endoftext|>` (id 0). No post-processor (no BOS/EOS are added by `encode`).

Usage: python scripts/train_tokenizer.py [--vocab-size 1024] [--check]
  --check           re-train in memory and fail if the result differs from the committed file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "python_export" / "mobilemoe_export" / "assets"
OUT = ASSETS / "tokenizer.json"
FIXTURE = REPO / "runner" / "tests" / "fixtures" / "tokenizer_cases.json"
SPECIAL = "<|endoftext|>"

# Strings the Rust tokenizer is checked on (ASCII, whitespace runs, digits, contractions,
# punctuation, accents, CJK, emoji, the special token, empty string).
SAMPLES = [
    "",
    "Hello, world!",
    "Once upon a time there was a small lighthouse.",
    "The model's router picks the top-4 experts; it doesn't use them all.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnew lines\n\n  indented line\r\n",
    "Numbers: 3.14159, 1024 bytes, 2025-06-01, 1,000,000!",
    "Café naïve résumé Zürich São Paulo",
    "你好, こんにちは 안녕하세요 Здравствуйте",
    "emoji 🚀🔥 and symbols ©®™ — “quotes” …",
    "def add(a, b):\n    return a + b  # sum",
    "I'm, you're, we've, they'll, she'd, it's, I'M, ISN'T",
    f"first{SPECIAL}second {SPECIAL} third",
    "   ",
    "a\u00a0b\u2003c",
    "x" * 200,
    "नमस्ते दुनिया, مرحبا بالعالم",
    "Ⅻ ٣٤ ½ x²",
    "<|endoftext|><|endoftext|>",
    "\u00e9t\u00e9 vs e\u0301te\u0301",
]


def corpus_files() -> list[Path]:
    # Only the corpus file written for this project: docs change often, and training on them
    # would make the committed tokenizer irreproducible (`--check` would go stale).
    return [ASSETS / "corpus.txt"]


def train(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Read the texts ourselves (sorted, fixed order) so training is reproducible.
    texts = [f.read_text(encoding="utf-8") for f in corpus_files()]
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def fixture_for(tok) -> dict:
    cases = []
    for s in SAMPLES:
        enc = tok.encode(s)
        cases.append({"text": s, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)})
    return {"vocab_size": tok.get_vocab_size(), "cases": cases}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = ap.parse_args(argv)

    tok = train(args.vocab_size)
    text = tok.to_str(pretty=True)
    fixture = json.dumps(fixture_for(tok), ensure_ascii=False, indent=1) + "\n"
    if args.check:
        ok = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        ok = ok and FIXTURE.exists() and FIXTURE.read_text(encoding="utf-8") == fixture
        print("up to date" if ok else "STALE: re-run scripts/train_tokenizer.py")
        return 0 if ok else 1
    OUT.write_text(text, encoding="utf-8")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(fixture, encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)} (vocab {tok.get_vocab_size()}) from "
          f"{[str(f.relative_to(REPO)) for f in corpus_files()]}")
    print(f"wrote {FIXTURE.relative_to(REPO)} ({len(SAMPLES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
