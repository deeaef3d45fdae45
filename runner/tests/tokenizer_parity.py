#!/usr/bin/env python3
"""Reference side of runner/tests/tokenizer_parity.rs: Python `tokenizers` on a text corpus.

Usage: tokenizer_parity.py OUT_DIR

Writes into OUT_DIR one `<kind>.json` tokenizer per kind and `cases.json`:
`{"tokenizers_version": ..., "kinds": [{"name", "tokenizer", "vocab_size", "cases": [{"text", "ids",
"decoded", "decoded_skip", "streamed"}], "decode_only": [{"ids", "decoded", "decoded_skip",
"streamed"}]}]}`: `ids` = `encode(text).ids` (post-processor applied, as the runners do),
`decoded*` = `decode(ids, skip_special_tokens=False/True)`, `streamed` = what the Python runner's
StreamPrinter prints token by token; `decode_only` = id sequences drawn from the whole vocabulary
(specials, byte tokens, pieces).

Kinds:
* byte_level_bpe: the shipped tokenizer of the default model (GPT-2 style ByteLevel BPE).
* unigram_metaspace: SentencePiece-style Unigram, NMT + NFKC + whitespace-collapsing normalizer,
  Metaspace pre-tokenizer/decoder, `<s>` prepended by a template post-processor, an added token.
* bpe_metaspace_byte_fallback: Llama-style BPE: Metaspace (prepend "first"), byte fallback tokens
  `<0x00>`..`<0xFF>`, decoder Replace + ByteFallback + Fuse + Strip.
* wordpiece: BERT-style: BertNormalizer (lowercase, accents stripped), BertPreTokenizer,
  WordPiece `##` decoder, `[CLS] $A [SEP]` post-processor.
The last three are trained here on the project's corpus (a few seconds).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "python_export" / "mobilemoe_export" / "assets"

EDGE_CASES = [
    "",
    " ",
    "   ",
    "Hello, world!",
    "  leading spaces and trailing   ",
    "tabs\tand\nnew lines\n\n  indented line\r\n",
    "Numbers: 3.14159, 1024 bytes, 2025-06-01, 1,000,000!",
    "Café naïve résumé Zürich São Paulo",
    "\u00e9t\u00e9 vs e\u0301te\u0301",
    "你好, こんにちは 안녕하세요 Здравствуйте",
    "नमस्ते दुनिया, مرحبا بالعالم",
    "emoji 🚀🔥 and symbols ©®™ — “quotes” …",
    "Ⅻ ٣٤ ½ x² ﬁne ｆｕｌｌｗｉｄｔｈ",
    "I'm, you're, we've, they'll, she'd, it's, I'M, ISN'T",
    "def add(a, b):\n    return a + b  # sum",
    "a\u00a0b\u2003c\u200bd",
    "x" * 200,
    "MiXeD CaSe WoRdS and UPPER lower",
    "<|endoftext|>first<|endoftext|> second <|endoftext|>",
    "<s> </s> <unk> [CLS] [SEP] [UNK] <|user|> hello <|user|>",
]


def corpus_lines() -> list[str]:
    lines = [ln for ln in (ASSETS / "corpus.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    rng = random.Random(1234)
    words = " ".join(lines).split()
    extra = ["\u00e9", "ß", "你", "🚀", "  ", "\t", "\n", "'s", "--", "1234", "Ω", "<|endoftext|>", "<|user|>", "##ing"]
    mixed = []
    for _ in range(60):
        parts = [rng.choice(words) if rng.random() < 0.8 else rng.choice(extra) for _ in range(rng.randint(1, 14))]
        mixed.append(rng.choice([" ", "", "  "]).join(parts))
    return lines + EDGE_CASES + mixed


def training_text() -> list[str]:
    return [(ASSETS / "corpus.txt").read_text(encoding="utf-8")]


def unigram_metaspace():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.add_tokens(["<|user|>"])
    return tok


def bpe_metaspace_byte_fallback():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    # Llama's layout: the 256 byte tokens are ordinary vocabulary entries, used for characters the
    # vocabulary lacks (byte_fallback), and decoded back to bytes by the ByteFallback decoder.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = json.loads(decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]).__getstate__())
    return Tokenizer.from_str(json.dumps(spec))


def wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


def byte_level_bpe():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ASSETS / "tokenizer.json"))


def streamed(tok, ids: list[int]) -> str:
    """What mobilemoe_export.generate.StreamPrinter prints for `ids` (without its newline)."""
    out, printed = [], 0
    for i in range(len(ids)):
        text = tok.decode(ids[:i + 1], skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > printed:
            out.append(text[printed:])
            printed = len(text)
    text = tok.decode(ids, skip_special_tokens=True)
    out.append(text[printed:])
    return "".join(out)


def decoded(tok, ids: list[int]) -> dict:
    return {"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True), "streamed": streamed(tok, ids)}


def decode_only(tok, rng: random.Random) -> list[dict]:
    n = tok.get_vocab_size()
    seqs = [list(range(min(n, 64))), list(range(max(0, n - 64), n))]
    seqs += [[rng.randrange(n) for _ in range(rng.randint(1, 24))] for _ in range(40)]
    return [decoded(tok, s) for s in seqs]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    import tokenizers

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    texts = corpus_lines()
    kinds = []
    for name, build in [("byte_level_bpe", byte_level_bpe), ("unigram_metaspace", unigram_metaspace),
                        ("bpe_metaspace_byte_fallback", bpe_metaspace_byte_fallback), ("wordpiece", wordpiece)]:
        tok = build()
        path = out / f"{name}.json"
        path.write_text(tok.to_str(), encoding="utf-8")
        cases = []
        for t in texts:
            cases.append({"text": t, **decoded(tok, tok.encode(t).ids)})
        kinds.append({"name": name, "tokenizer": str(path), "vocab_size": tok.get_vocab_size(), "cases": cases,
                      "decode_only": decode_only(tok, random.Random(7))})
    doc = {"tokenizers_version": tokenizers.__version__, "kinds": kinds}
    (out / "cases.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    print(f"python tokenizers {tokenizers.__version__}: {len(kinds)} kinds x {len(texts)} texts -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
